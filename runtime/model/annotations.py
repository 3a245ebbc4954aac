"""The user-facing contract: `rewarm.dev/*` annotations, parsed once into a frozen Request.

Also reads the Kubernetes facts that containerd (io.kubernetes.cri.*) and CRI-O
(io.kubernetes.*) put into config.json: the pod's namespace, name and uid, the container's name,
whether this is the sandbox.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, Mapping, TypeVar

from runtime.front.names import ANNOTATION_PREFIX
from runtime.model import engines, hooks
from runtime.model.errors import InvalidInput, shown
from runtime.model.hooks import HookCall
from runtime.model.names import validate_name, validate_namespace
from runtime.model.registry_ref import parse as parse_ref

PREFIX = ANNOTATION_PREFIX
SNAPSHOT = PREFIX + "snapshot"
CAPTURE = PREFIX + "capture"
READY_FILE = PREFIX + "ready-file"
READY_HTTP = PREFIX + "ready-http"
FALLBACK = PREFIX + "fallback"
QUIESCE_HTTP = PREFIX + "quiesce-http"
RESUME_HTTP = PREFIX + "resume-http"
SNAPSHOT_REF = PREFIX + "snapshot-ref"
PUSH = PREFIX + "push"
ENGINE = PREFIX + "engine"
SLEEP_LEVEL = PREFIX + "sleep-level"
CONTAINER = PREFIX + "container"
KNOWN = frozenset({SNAPSHOT, CAPTURE, READY_FILE, READY_HTTP, FALLBACK, QUIESCE_HTTP, RESUME_HTTP, SNAPSHOT_REF, PUSH,
                   ENGINE, SLEEP_LEVEL, CONTAINER})

# The pod condition a pod lists in spec.readinessGates so that it takes no traffic until rewarm is
# done with it: `rewarm agent` sets it True once an on-ready capture is over and the worker is awake,
# and at once for a pod that is not captured (restored, or cold-started without capture).
READY_CONDITION = PREFIX + "ready"

# Written by rewarm-runc into config.json, never by users (outside the user's prefix).
INTERNAL_PREFIX = "internal.rewarm.dev/"
IMAGE_DIGEST_KEY = INTERNAL_PREFIX + "image-digest"  # the image digest containerd has for the container

DEFAULT_READY_FILE = "/run/rewarm/ready"

NAMESPACE_KEYS = ("io.kubernetes.cri.sandbox-namespace", "io.kubernetes.pod.namespace")
POD_KEYS = ("io.kubernetes.cri.sandbox-name", "io.kubernetes.pod.name")   # containerd's, CRI-O's
POD_UID_KEYS = ("io.kubernetes.cri.sandbox-uid", "io.kubernetes.pod.uid")   # containerd's, CRI-O's
CONTAINER_NAME_KEY = "io.kubernetes.cri.container-name"                 # containerd's
CRIO_LABELS_KEY = "io.kubernetes.cri-o.Labels"                          # CRI-O's: the container's labels, as JSON
KUBELET_CONTAINER_NAME_LABEL = "io.kubernetes.container.name"           # kubelet's label, inside CRI-O's
CONTAINER_TYPE_KEYS = ("io.kubernetes.cri.container-type", "io.kubernetes.cri-o.ContainerType")


class Fallback(Enum):
    COLD = "cold"
    FAIL = "fail"


class Capture(Enum):
    NEVER = "never"
    ON_READY = "on-ready"
    ON_READY_THEN_EXIT = "on-ready-then-exit"   # a capture Job: captured once ready, then the container exits

    @property
    def when_ready(self) -> bool:
        """Whether a cold start of the container is captured once it is ready."""
        return self is not Capture.NEVER


class Push(Enum):
    NEVER = "never"
    ON_CAPTURE = "on-capture"


@dataclass(frozen=True)
class WorkerHooks:
    """How rewarm talks to the worker around a capture: its annotations, or its engine's preset."""
    quiesce: tuple[HookCall, ...] = ()  # before a capture: the worker drops what need not be saved
    resume: tuple[HookCall, ...] = ()   # after a capture (the source) and after a restore
    ready_http: str | None = None       # readiness: HTTP 200 from this URL (else the ready file)
    reads_back: tuple[str, ...] = ()    # container paths the worker reads again on resume (its preset knows)
    advice: str = ""                    # the preset's word on a faster restore (events and doctor show it)


@dataclass(frozen=True)
class Request:
    """What a container asks of rewarm."""
    snapshot: str
    capture: Capture = Capture.NEVER
    ready_file: str = DEFAULT_READY_FILE
    fallback: Fallback = Fallback.COLD
    hooks: WorkerHooks = field(default_factory=WorkerHooks)
    snapshot_ref: str | None = None     # REGISTRY/REPO:TAG to pull from on a miss (and push to)
    push: Push = Push.NEVER             # push to snapshot_ref after an on-ready capture

    @property
    def ready_http(self) -> str | None:
        return self.hooks.ready_http


def wants_rewarm(annotations: Mapping[str, str]) -> bool:
    return any(k.startswith(PREFIX) for k in annotations)


def is_sandbox(annotations: Mapping[str, str]) -> bool:
    return any(annotations.get(k) == "sandbox" for k in CONTAINER_TYPE_KEYS)


def names_namespace(annotations: Mapping[str, str]) -> bool:
    return any(annotations.get(key) for key in NAMESPACE_KEYS)


def namespace_of(annotations: Mapping[str, str]) -> str:
    """The pod's Kubernetes namespace, validated (it becomes a directory of the store). containerd
    and CRI-O each write it under their own key; where the workload can set the other runtime's key
    (CRI-O and Podman pass annotations through), two that disagree are refused, never resolved."""
    given = {key: annotations[key] for key in NAMESPACE_KEYS if annotations.get(key)}
    if len(set(given.values())) > 1:
        raise InvalidInput("the pod's namespace is given twice and differs: "
                           + ", ".join(f"{k}={v[:64]!r}" for k, v in given.items()))
    return validate_namespace(next(iter(given.values()))) if given else "default"


def _first(annotations: Mapping[str, str], keys: tuple[str, ...]) -> str:
    return next((annotations[k] for k in keys if annotations.get(k)), "")


def pod_fields(annotations: Mapping[str, str]) -> dict[str, str]:
    """{"pod": NAME, "pod_uid": UID} for the events of a container of a Kubernetes pod, else {}
    (the event log names pods so that `rewarm events --pod` and the node agent find them; the
    agent's Events carry the uid because `kubectl describe pod` looks Events up by it)."""
    pod, uid = _first(annotations, POD_KEYS), _first(annotations, POD_UID_KEYS)
    return {**({"pod": pod[:253]} if pod else {}), **({"pod_uid": uid[:128]} if pod and uid else {})}


def container_name(annotations: Mapping[str, str]) -> str:
    """The container's name in its pod's spec, where the runtime says it ("" elsewhere)."""
    if annotations.get(CONTAINER_NAME_KEY):
        return annotations[CONTAINER_NAME_KEY]
    try:
        labels = json.loads(annotations.get(CRIO_LABELS_KEY) or "{}")
    except ValueError:
        return ""
    name = labels.get(KUBELET_CONTAINER_NAME_LABEL) if isinstance(labels, dict) else None
    return name if isinstance(name, str) else ""


def is_for_this_container(annotations: Mapping[str, str]) -> bool:
    """Whether rewarm restores and captures this container. A pod's annotations reach every one of
    its containers: where the pod has others (a proxy beside the worker), rewarm.dev/container names
    the worker and the rest start as on runc. A container whose name the runtime does not say (not a
    Kubernetes pod) is the one."""
    wanted, name = annotations.get(CONTAINER), container_name(annotations)
    return wanted is None or not name or wanted == name


def wants_fail(annotations: Mapping[str, str]) -> bool:
    """rewarm.dev/fallback: fail, read even when other annotations are invalid."""
    return annotations.get(FALLBACK) == Fallback.FAIL.value


E = TypeVar("E", bound=Enum)


def _enum(enum: type[E], key: str, value: str | None, default: E) -> E:
    if value is None:
        return default
    try:
        return enum(value)
    except ValueError as e:
        allowed = " or ".join(repr(m.value) for m in enum)
        raise InvalidInput(f"invalid {key}: {shown(value)} (expected {allowed})") from e


def worker_hooks(annotations: Mapping[str, str], process: Mapping[str, Any]) -> WorkerHooks:
    """The hooks of a container: its engine's preset (read off its command line, `process` of its
    spec), with each hook its annotations name instead."""
    preset = None
    if SLEEP_LEVEL in annotations and ENGINE not in annotations:
        raise InvalidInput(f"{SLEEP_LEVEL} is {ENGINE}'s: it needs {ENGINE}: vllm")
    level = (_enum(engines.SleepLevel, SLEEP_LEVEL, annotations[SLEEP_LEVEL], engines.DEFAULT_SLEEP_LEVEL)
             if SLEEP_LEVEL in annotations else None)   # None: the engine's default
    if ENGINE in annotations:
        preset = engines.preset(annotations[ENGINE], [str(a) for a in process.get("args") or []],
                                [str(e) for e in process.get("env") or []], level)
    quiesce = hooks.parse(QUIESCE_HTTP, annotations[QUIESCE_HTTP]) if QUIESCE_HTTP in annotations else None
    resume = hooks.parse(RESUME_HTTP, annotations[RESUME_HTTP]) if RESUME_HTTP in annotations else None
    ready_http = hooks.valid_url(READY_HTTP, annotations[READY_HTTP]) if READY_HTTP in annotations else None
    return WorkerHooks(
        quiesce=quiesce if quiesce is not None else preset.quiesce if preset else (),
        resume=resume if resume is not None else preset.resume if preset else (),
        ready_http=ready_http or (preset.ready_http if preset else None),
        reads_back=preset.reads_back if preset else (),
        advice=preset.advice if preset and resume is None else "")


def parse(annotations: Mapping[str, str], process: Mapping[str, Any]) -> Request:
    """Validate every rewarm.dev/* annotation; raise InvalidInput naming the first bad one. `process`
    (of the container's spec) is where an engine preset reads its port and model."""
    unknown = sorted(k for k in annotations if k.startswith(PREFIX) and k not in KNOWN)
    if unknown:
        raise InvalidInput(f"unknown annotation {unknown[0]} (known: {', '.join(sorted(KNOWN))})")
    if SNAPSHOT not in annotations:
        raise InvalidInput(f"{SNAPSHOT} is required when other {PREFIX} annotations are set")
    ready_file = annotations.get(READY_FILE, DEFAULT_READY_FILE)
    if not ready_file.startswith("/") or "\0" in ready_file or "/../" in ready_file + "/":
        raise InvalidInput(f"invalid {READY_FILE}: {shown(ready_file)} (an absolute path inside the container)")
    worker = worker_hooks(annotations, process)
    snapshot_ref = annotations.get(SNAPSHOT_REF)
    if snapshot_ref is not None:
        snapshot_ref = str(parse_ref(snapshot_ref, SNAPSHOT_REF))
    push = _enum(Push, PUSH, annotations.get(PUSH), Push.NEVER)
    if push is Push.ON_CAPTURE and snapshot_ref is None:
        raise InvalidInput(f"{PUSH}: {push.value} needs {SNAPSHOT_REF} (where to push)")
    return Request(
        snapshot=validate_name(annotations[SNAPSHOT]),
        snapshot_ref=snapshot_ref,
        push=push,
        capture=_enum(Capture, CAPTURE, annotations.get(CAPTURE), Capture.NEVER),
        ready_file=ready_file,
        hooks=worker,
        fallback=_enum(Fallback, FALLBACK, annotations.get(FALLBACK), Fallback.COLD),
    )
