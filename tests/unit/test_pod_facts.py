"""What rewarm reads of a pod and tells about it: the pod's uid and the container's name from the
runtime's annotations (containerd's and CRI-O's keys), which container of a pod is rewarm's, which
events are Warnings, and which readiness-gate condition each record asks for."""
from __future__ import annotations

import json

import pytest

from runtime.model import annotations as ann
from runtime.model.events import EventKind, is_failure
from runtime.node.agent import Gate, PodRef, pod_event

CONTAINERD = {"io.kubernetes.cri.sandbox-name": "vllm-0", "io.kubernetes.cri.sandbox-uid": "6f1c-uid",
              "io.kubernetes.cri.container-name": "vllm"}
CRIO = {"io.kubernetes.pod.name": "vllm-0", "io.kubernetes.pod.uid": "6f1c-uid",
        "io.kubernetes.cri-o.Labels": json.dumps({"io.kubernetes.container.name": "vllm"})}


@pytest.mark.parametrize("given", [CONTAINERD, CRIO], ids=["containerd", "cri-o"])
def test_the_pod_and_its_uid_are_read_from_either_runtimes_annotations(given):
    assert ann.pod_fields(given) == {"pod": "vllm-0", "pod_uid": "6f1c-uid"}
    assert ann.container_name(given) == "vllm"


def test_a_uid_without_a_pod_names_nothing():
    assert ann.pod_fields({"io.kubernetes.cri.sandbox-uid": "u"}) == {}
    assert ann.pod_fields({"io.kubernetes.cri.sandbox-name": "p"}) == {"pod": "p"}


@pytest.mark.parametrize("given", [CONTAINERD, CRIO], ids=["containerd", "cri-o"])
def test_rewarm_container_names_the_one_container_of_a_pod_that_rewarm_restores_and_captures(given):
    assert ann.is_for_this_container({**given, ann.CONTAINER: "vllm"})
    assert not ann.is_for_this_container({**given, ann.CONTAINER: "proxy"})
    assert ann.is_for_this_container(given)                          # not named: every container
    assert ann.is_for_this_container({ann.CONTAINER: "proxy"})       # no name from the runtime: not a pod's
    assert ann.is_for_this_container({"io.kubernetes.cri-o.Labels": "{not json", ann.CONTAINER: "vllm"})


def test_a_capture_job_is_a_capture_once_ready():
    request = ann.parse({ann.SNAPSHOT: "llm", ann.CAPTURE: "on-ready-then-exit", ann.CONTAINER: "vllm"}, {})
    assert request.capture is ann.Capture.ON_READY_THEN_EXIT and request.capture.when_ready
    assert not ann.Capture.NEVER.when_ready and ann.Capture.ON_READY.when_ready


@pytest.mark.parametrize("kind,code,warning", [
    (EventKind.COLD_START, "no_snapshot", False), (EventKind.COLD_START, "not_fitting", False),
    (EventKind.COLD_START, "pull_timeout", False), (EventKind.COLD_START, None, False),
    (EventKind.COLD_START, "restore_failed", True), (EventKind.COLD_START, "resume_failed", True),
    (EventKind.RESTORE_REFUSED, "no_snapshot", True), (EventKind.CAPTURE_FAILED, None, True),
    (EventKind.PULL_FAILED, "pull_refused", True), (EventKind.PULL_FAILED, "not_fitting", False),
    (EventKind.PULL_FAILED, "no_snapshot", False),
    (EventKind.PULL_FAILED, "registry_error", True), (EventKind.PUSH_FAILED, "registry_error", True),
    (EventKind.HOOK_FAILED, None, True), (EventKind.RESTORED, None, False), (EventKind.PULLED, None, False),
    (EventKind.PUSHED, None, False), (EventKind.CAPTURE_SKIPPED, None, False)])
def test_what_is_a_warning(kind, code, warning):
    assert is_failure(kind, code) is warning
    record = {"event": kind.value, "namespace": "ns", "pod": "p", "code": code}
    made = pod_event(record)
    if kind is EventKind.PULL_FAILED and not warning:   # the cold start that follows says it
        assert made is None
    else:
        assert made is not None and made.type == ("Warning" if warning else "Normal")


def record(kind: EventKind, container: str = "c1", **fields: object) -> dict:
    return {"event": kind.value, "namespace": "ns", "pod": "p", "pod_uid": "u", "container": container, **fields}


def opened(gate: Gate, *records: dict) -> list[bool | None]:
    """The gate's status each record asks for (None: no change asked)."""
    asked = []
    for r in records:
        work = gate.work(r)
        asked.append(None if work is None or work.verdict is None else work.verdict.open)
    return asked


def test_a_pod_of_two_rewarm_containers_opens_only_when_neither_is_held():
    """Without rewarm.dev/container both containers of a pod are rewarm's: the one not captured
    must not let the pod in while the other's capture is under way."""
    assert opened(Gate(), record(EventKind.COLD_START, "c1", capture="on-ready"),
                  record(EventKind.COLD_START, "c2"),                # the sidecar: nothing to capture
                  record(EventKind.CAPTURING, "c1", capture="on-ready"),
                  record(EventKind.CAPTURED, "c1")) == [False, None, False, True]


def test_a_worker_that_did_not_wake_keeps_the_gate_shut_until_the_pod_restores_again():
    gate = Gate()
    assert opened(gate, record(EventKind.COLD_START, capture="on-ready"), record(EventKind.HOOK_FAILED, reason="500"),
                  record(EventKind.CAPTURED), record(EventKind.RESTORED, "c2")) == [False, False, None, True]


def test_records_of_no_pod_ask_nothing():
    assert Gate().work({"event": "captured", "namespace": "ns", "container": "c"}) is None
    assert Gate().work(record(EventKind.PULLED)) is None
    assert Gate().work(record(EventKind.RESTORE_REFUSED)) is None
    work = Gate().work(record(EventKind.CAPTURING, capture="on-ready-then-exit"))
    assert work is not None and work.capturing is None and work.pod == PodRef("ns", "p", "u")
