"""`rewarm agent`: what rewarm did on this node, where an operator looks. It follows the event log
and posts each restore, cold start, refusal, capture, pull and push of a pod as a Kubernetes Event on
that pod (`kubectl describe pod` finds them by the pod's uid, which the runtime gives rewarm; what
the situation calls for, such as the first pod's cold start, is Normal, what broke a Warning). It
keeps pods out of their Services while rewarm holds them: a pod that lists the readiness gate
rewarm.dev/ready gets that condition True once its on-ready capture is over and its worker
awake, and at once where it is not captured (restored, or cold-started without capture); a pod
without the gate that is about to be captured gets a Warning saying so. It serves the event log's
metrics and its own on /metrics and its readiness on /readyz, and labels the node for the
RuntimeClass when asked.

It runs in the node DaemonSet with the node's event log mounted, under a ServiceAccount that may
create events, get pods and patch their status. The node's work never waits on the API server, and
the agent survives any API server: every call has a time limit and reads at most ANSWER_LIMIT bytes
of the answer (POD_ANSWER_LIMIT of a pod), whatever it holds (an Event's answer is never parsed);
every failure is counted. An Event or a condition that cannot be posted is kept and tried again, in
order (the oldest dropped beyond BACKLOG); each Event has a name of its own, so a retry of one that
did arrive is refused as a duplicate and none is made twice. /readyz answers 200 while the API
server takes what the agent sends (not the last FAILED_IN_A_ROW calls failed) and the node is
labelled as asked; /metrics staying up says nothing about that.
"""
from __future__ import annotations

import datetime
import hashlib
import json
import os
import sys
import threading
import time
import urllib.parse
from collections import OrderedDict, deque
from dataclasses import dataclass, replace
from enum import Enum
from socketserver import ThreadingMixIn
from typing import Any, Callable, Iterable, Mapping
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server
from wsgiref.types import StartResponse, WSGIEnvironment

import urllib3
from prometheus_client import CollectorRegistry, Counter, Gauge, make_wsgi_app

from runtime.host import settings_file
from runtime.observe import logs, metrics
from runtime.model import clock
from runtime.model.annotations import READY_CONDITION, Capture
from runtime.model.errors import SettingsError
from runtime.model.events import EventKind, ReasonCode, is_failure, reason_code

COMPONENT = "rewarm"
SERVICE_ACCOUNT = "var/run/secrets/kubernetes.io/serviceaccount"
NODE_LABEL = "rewarm.dev/runtime"   # "ready" where the handler is installed: the RuntimeClass selects it

ANSWER_LIMIT = 64 << 10   # an Event's answer is about 1 KiB: no answer is read further
POD_ANSWER_LIMIT = 3 << 20   # a pod as the API server gives it: etcd holds at most 1.5 MiB of an object
FAILED_IN_A_ROW = 3       # this many failed posts in a row: not ready, and new Events wait in the backlog
BACKLOG = 1000            # Events kept for another try while the API server fails
POLL_S = 0.5              # how often the event log is looked at
POD_MEMORY = 10_000       # pods whose capture the agent waits for (or whose worker did not wake) it remembers
CATCH_UP_S = 900          # at its start, the agent sets the gates that the records of this long before ask for
CATCH_UP_RECORDS = 1000   # (of at most this many records back)


@dataclass(frozen=True)
class PodRef:
    namespace: str
    name: str
    uid: str = ""    # "" where the runtime did not say (kubectl still lists its Events by name)


@dataclass(frozen=True)
class PodEvent:
    namespace: str
    pod: str
    type: str        # Normal or Warning, as Kubernetes spells them
    reason: str      # CamelCase, what `kubectl get events` shows in REASON
    message: str
    name: str = ""   # the Event's own name: its pod's and a digest of its record
    uid: str = ""    # the pod's uid: `kubectl describe pod` shows the Events that carry it


def _stages(record: Mapping[str, Any]) -> str:
    stages = record.get("stages") or {}
    top = sorted(((k, v) for k, v in stages.items() if isinstance(v, (int, float))), key=lambda kv: -kv[1])[:4]
    return ", ".join(f"{k} {v:.2f}s" for k, v in top)


def _name(pod: str, record: Mapping[str, Any]) -> str:
    """The same record always gives the same name (a DNS subdomain, as Event names are): a post
    made twice is refused the second time (409) instead of making two Events."""
    digest = hashlib.sha256(json.dumps(record, sort_keys=True, default=str).encode()).hexdigest()[:16]
    return f"{pod[:236].rstrip('.-')}.{digest}"


def _gib(record: Mapping[str, Any], key: str = "bytes") -> str:
    size = record.get(key)
    return f"{int(size) / 2**30:.2f} GiB" if isinstance(size, (int, float)) else ""


def _kind(record: Mapping[str, Any]) -> EventKind | None:
    try:
        return EventKind(record.get("event"))
    except ValueError:
        return None


def pod_of(record: Mapping[str, Any]) -> PodRef | None:
    """The pod a record is about, or None (a record of the node, or of a container outside Kubernetes)."""
    pod, namespace, uid = record.get("pod"), record.get("namespace"), record.get("pod_uid")
    if not isinstance(pod, str) or not isinstance(namespace, str) or not pod or not namespace:
        return None
    return PodRef(namespace, pod, uid if isinstance(uid, str) else "")


def _restored(r: Mapping[str, Any]) -> str:
    stages = _stages(r)
    return f"restored from snapshot {r.get('snapshot', '')} in {r.get('seconds')}s" + (f" ({stages})" if stages else "")


def _cold(r: Mapping[str, Any]) -> str:
    then = "; it is captured once ready" if r.get("capture") else ""
    return f"not restored from snapshot {r.get('snapshot', '')}, started cold: {r.get('reason', '')}{then}"


def _captured(r: Mapping[str, Any]) -> str:
    size = _gib(r)
    return f"captured as snapshot {r.get('snapshot', '')} in {r.get('seconds')}s" + (f" ({size})" if size else "")


def _pulled(r: Mapping[str, Any]) -> str:
    size = _gib(r)
    return (f"pulled snapshot {r.get('snapshot', '')} from {r.get('ref', '')} in {r.get('seconds')}s"
            + (f" ({size})" if size else ""))


def _pushed(r: Mapping[str, Any]) -> str:
    sent, there = _gib(r), _gib(r, "skipped_bytes")
    sizes = ", ".join(p for p in (f"{sent} sent" if sent else "", f"{there} there already" if there else "") if p)
    return (f"pushed snapshot {r.get('snapshot', '')} to {r.get('ref', '')} ({r.get('digest', '')}) in "
            f"{r.get('seconds')}s" + (f"; {sizes}" if sizes else ""))


# What each kind of record says on its pod: the Event's reason and its message. Whether it is a
# Warning is events.is_failure's one decision.
_SAID: dict[EventKind, tuple[str, Callable[[Mapping[str, Any]], str]]] = {
    EventKind.RESTORED: ("Restored", _restored),
    EventKind.COLD_START: ("ColdStart", _cold),
    EventKind.RESTORE_REFUSED: ("RestoreRefused", lambda r: f"not restored from snapshot {r.get('snapshot', '')} "
                                f"and not started (fallback: fail): {r.get('reason', '')}"),
    EventKind.CAPTURED: ("Captured", _captured),
    EventKind.CAPTURE_FAILED: ("CaptureFailed", lambda r: f"capture as snapshot {r.get('snapshot', '')} failed: "
                               f"{r.get('reason', '')}"),
    EventKind.CAPTURE_SKIPPED: ("CaptureSkipped", lambda r: f"not captured as snapshot {r.get('snapshot', '')}: "
                                f"{r.get('reason', '')}"),
    EventKind.HOOK_FAILED: ("WorkerNotWoken", lambda r: "the worker's resume hook failed after its capture, so "
                            f"it may not serve; rewarm's readiness gate stays False: {r.get('reason', '')}"),
    EventKind.PULLED: ("SnapshotPulled", _pulled),
    EventKind.PULL_FAILED: ("SnapshotPullFailed", lambda r: f"pull of snapshot {r.get('snapshot', '')} from "
                            f"{r.get('ref', '')} failed: {r.get('reason', '')}"),
    EventKind.PUSHED: ("SnapshotPushed", _pushed),
    EventKind.PUSH_FAILED: ("SnapshotPushFailed", lambda r: f"push of snapshot {r.get('snapshot', '')} to "
                            f"{r.get('ref', '')} failed: {r.get('reason', '')}"),
}


def pod_event(record: Mapping[str, Any]) -> PodEvent | None:
    """The Kubernetes Event for one event-log record, or None (not about a pod, or not news)."""
    pod, kind = pod_of(record), _kind(record)
    if pod is None or kind not in _SAID or reason_code(record.get("code")) is ReasonCode.POD_GONE:
        return None   # (a pull that ended with its pod: nobody to tell)
    if kind is EventKind.PULL_FAILED and not is_failure(kind, record.get("code")):
        return None   # no snapshot there yet, or none of this node's: the cold start's Event says so
    reason, message = _SAID[kind]
    return PodEvent(pod.namespace, pod.name, "Warning" if is_failure(kind, record.get("code")) else "Normal",
                    reason, message(record), name=_name(pod.name, record), uid=pod.uid)


def body(e: PodEvent, node: str, when: datetime.datetime) -> dict[str, Any]:
    """The core/v1 Event, as the API server takes it."""
    stamp = _stamp(when)
    involved = {"kind": "Pod", "apiVersion": "v1", "name": e.pod, "namespace": e.namespace,
                **({"uid": e.uid} if e.uid else {})}
    return {"apiVersion": "v1", "kind": "Event",
            "metadata": {"name": e.name, "namespace": e.namespace},
            "involvedObject": involved,
            "type": e.type, "reason": e.reason, "message": e.message[:1024], "count": 1,
            "firstTimestamp": stamp, "lastTimestamp": stamp,
            "source": {"component": COMPONENT, "host": node},
            "reportingComponent": COMPONENT, "reportingInstance": node}


def _stamp(when: datetime.datetime) -> str:
    return clock.rfc3339(when.timestamp())


# The readiness gate

@dataclass(frozen=True)
class Verdict:
    """The value of a pod's rewarm.dev/ready condition, and why."""
    open: bool
    reason: str
    message: str


@dataclass(frozen=True)
class GateWork:
    """What a record asks of its pod's gate: the condition to set where the pod lists the gate, and
    the Warning to post where it does not (a capture begins while the pod may take traffic)."""
    pod: PodRef
    verdict: Verdict | None
    capturing: Mapping[str, Any] | None = None   # the record of a capture that begins: a pod without the gate is warned


CAPTURING = Verdict(False, "Capturing", "rewarm is capturing the worker (it sleeps and CRIU freezes it): no "
                                        "traffic until the capture is done")
PENDING = Verdict(False, "CapturePending", "started cold; rewarm captures it once ready, then lets it take traffic")


def ungated_warning(pod: PodRef, ready: bool, record: Mapping[str, Any]) -> PodEvent:
    """The Warning on a pod without the gate whose capture begins: what happens, and the fix."""
    now = "it is Ready now, so its Services" if ready else "once Ready, its Services"
    message = (f"rewarm captures this pod as snapshot {record.get('snapshot', '')} now, and {now} send it "
               "requests while the worker sleeps and CRIU freezes it (seconds to a minute): those fail or hang. "
               f"List the readiness gate in the pod spec, readinessGates: [{{conditionType: {READY_CONDITION}}}], "
               "so that rewarm keeps it out of its Services until the capture is done, or capture in a Job "
               f"(rewarm.dev/capture: {Capture.ON_READY_THEN_EXIT.value})")
    return PodEvent(pod.namespace, pod.name, "Warning", "CaptureWithoutReadinessGate", message,
                    name=_name(pod.name, {**record, "about": "no readiness gate"}), uid=pod.uid)


class Gate:
    """Which condition each record asks for, with what the agent must remember between records: the
    containers of a pod whose capture is still to end (a pod's gate opens only once none is left), and
    the pods whose worker did not wake after its capture (their gate stays shut: a worker vLLM left
    asleep answers /health but no request). At most POD_MEMORY pods of each, the oldest forgotten."""

    def __init__(self) -> None:
        self._pending: OrderedDict[PodRef, set[str]] = OrderedDict()
        self._unwoken: OrderedDict[PodRef, str] = OrderedDict()

    def work(self, record: Mapping[str, Any]) -> GateWork | None:
        pod, kind, container = pod_of(record), _kind(record), str(record.get("container", ""))
        if pod is None:
            return None
        if kind is EventKind.RESTORED:
            self._unwoken.pop(pod, None)
            return self._open_unless_pending(pod, Verdict(True, "Restored", "restored from a snapshot: not captured"))
        if kind is EventKind.COLD_START and record.get("capture"):
            self._remember(self._pending, pod, self._pending.get(pod, set()) | {container})
            return GateWork(pod, PENDING)
        if kind is EventKind.COLD_START:
            return self._open_unless_pending(pod, Verdict(True, "NotCaptured", "started cold, not to be captured"))
        if kind is EventKind.CAPTURING:
            job = record.get("capture") == Capture.ON_READY_THEN_EXIT.value   # a capture Job serves nobody
            return GateWork(pod, CAPTURING, None if job else record)
        if kind is EventKind.HOOK_FAILED:
            self._remember(self._unwoken, pod, str(record.get("reason", "")))
            return GateWork(pod, Verdict(False, "WorkerNotWoken", f"the worker's resume hook failed after its capture: "
                                                                  f"{record.get('reason', '')}"))
        if kind in (EventKind.CAPTURED, EventKind.CAPTURE_FAILED, EventKind.CAPTURE_SKIPPED):
            return self._capture_ended(pod, container, kind)
        return None

    def _capture_ended(self, pod: PodRef, container: str, kind: EventKind) -> GateWork | None:
        left = self._pending.pop(pod, set()) - {container}
        if left:
            self._remember(self._pending, pod, left)
        if pod in self._unwoken:
            return None   # shut when the resume hook failed, and it stays so
        said = {EventKind.CAPTURED: "captured", EventKind.CAPTURE_FAILED: "capture failed, the worker serves on",
                EventKind.CAPTURE_SKIPPED: "not captured"}[kind]
        return self._open_unless_pending(pod, Verdict(True, "CaptureDone", f"{said}; the worker is awake"))

    def _open_unless_pending(self, pod: PodRef, verdict: Verdict) -> GateWork | None:
        return None if self._pending.get(pod) else GateWork(pod, verdict)

    @staticmethod
    def _remember(memory: "OrderedDict[PodRef, Any]", pod: PodRef, value: Any) -> None:
        memory[pod] = value
        memory.move_to_end(pod)
        while len(memory) > POD_MEMORY:
            memory.popitem(last=False)


@dataclass(frozen=True)
class PodFacts:
    """What the agent reads of a pod: its uid, whether it lists the gate, whether it is Ready, and
    the gate condition's status and reason now (None: not set yet)."""
    uid: str
    gated: bool
    ready: bool
    gate: tuple[str, str] | None


def pod_facts(answer: bytes) -> PodFacts:
    """The facts of a pod from the API server's answer (ApiFailure where it is not a pod)."""
    try:
        pod = json.loads(answer)
        gates = pod.get("spec", {}).get("readinessGates") or []
        conditions = {c.get("type"): c for c in pod.get("status", {}).get("conditions") or []}
        gate = conditions.get(READY_CONDITION)
        return PodFacts(str(pod["metadata"]["uid"]), any(g.get("conditionType") == READY_CONDITION for g in gates),
                        conditions.get("Ready", {}).get("status") == "True",
                        (str(gate.get("status")), str(gate.get("reason"))) if gate else None)
    except (ValueError, KeyError, TypeError, AttributeError) as e:
        raise ApiFailure("other", f"not a pod: {type(e).__name__}: {e}", retry=False, call="pod") from e


def condition_patch(uid: str, verdict: Verdict, facts: PodFacts, when: datetime.datetime) -> dict[str, Any]:
    """The strategic merge patch of pods/status that sets the gate condition (conditions merge by
    type). The pod's uid rides along as a precondition, as kubelet's own status patches do: a pod
    deleted and made again under the same name (a StatefulSet's) is refused, not patched. The
    transition time moves only where the status does."""
    status = "True" if verdict.open else "False"
    condition: dict[str, Any] = {"type": READY_CONDITION, "status": status, "reason": verdict.reason,
                                 "message": verdict.message[:1024]}
    if facts.gate is None or facts.gate[0] != status:
        condition["lastTransitionTime"] = _stamp(when)
    return {"metadata": {"uid": uid}, "status": {"conditions": [condition]}}


# The API server, as the agent uses it

class ApiFailure(Exception):
    """A call that did not do its work: `reason` is the metric's label (timeout, unreachable, other,
    or http-STATUS); `retry` says whether the same call may work later; `call` which call it was
    (event, label, pod, condition)."""

    def __init__(self, reason: str, detail: str, retry: bool = True, call: str = "event") -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason, self.retry, self.call = reason, retry, call


class ApiServer:
    """The calls the agent makes (create an Event, patch the node's labels, get a pod, patch a pod's
    status) over the kubernetes client's connection: its host, TLS and credentials (a ServiceAccount
    token it renews included). The requests are made here rather than through its API methods, which
    read a whole answer (an error's too) into memory and deserialize it: here each call ends within
    about twice `timeout_s` and reads at most ANSWER_LIMIT bytes of any answer (POD_ANSWER_LIMIT of
    a pod's)."""

    def __init__(self, api_client: Any, timeout_s: float) -> None:
        self.configuration = api_client.configuration
        self.pool = api_client.rest_client.pool_manager
        self.timeout_s = timeout_s

    def create_event(self, e: PodEvent, node: str) -> None:
        status, answer = self._call("POST", f"/api/v1/namespaces/{_quoted(e.namespace)}/events",
                                    body(e, node, datetime.datetime.now(datetime.timezone.utc)), "application/json")
        if status != 409:   # AlreadyExists: an earlier try of this same Event did arrive
            _expect_success(status, answer, "event")

    def label(self, node: str, ready: bool) -> None:
        """Set (or take off) the label the RuntimeClass's nodeSelector asks for."""
        patch = {"metadata": {"labels": {NODE_LABEL: "ready" if ready else None}}}
        status, answer = self._call("PATCH", f"/api/v1/nodes/{_quoted(node)}", patch,
                                    "application/strategic-merge-patch+json", call="label")
        _expect_success(status, answer, "label")

    def pod(self, pod: PodRef) -> PodFacts | None:
        """The pod's facts; None where it is gone."""
        status, answer = self._call("GET", _pod_path(pod), None, "", call="pod", limit=POD_ANSWER_LIMIT)
        if status == 404:
            return None
        _expect_success(status, answer, "pod")
        return pod_facts(answer)

    def set_condition(self, pod: PodRef, verdict: Verdict, facts: PodFacts) -> bool:
        """Set the gate condition of the pod whose uid `facts` has; False where that pod is gone, or
        the name is another pod's now (404, or the uid precondition's 409)."""
        patch = condition_patch(facts.uid, verdict, facts, datetime.datetime.now(datetime.timezone.utc))
        status, answer = self._call("PATCH", _pod_path(pod) + "/status", patch,
                                    "application/strategic-merge-patch+json", call="condition")
        if status in (404, 409):
            return False
        _expect_success(status, answer, "condition")
        return True

    def _call(self, method: str, path: str, payload: Mapping[str, Any] | None, content_type: str,
              call: str = "event", limit: int = ANSWER_LIMIT) -> tuple[int, bytes]:
        deadline = time.monotonic() + self.timeout_s
        try:
            response = self.pool.request(method, self.configuration.host.rstrip("/") + path,
                                         body=None if payload is None else json.dumps(payload).encode(),
                                         headers=self._headers(content_type),
                                         timeout=urllib3.Timeout(total=self.timeout_s), retries=False,
                                         preload_content=False)
            return response.status, _bounded_answer(response, deadline, limit)
        except Exception as e:   # whatever the client or the connection raise, it costs this call only
            raise ApiFailure(_failure_reason(e), f"{type(e).__name__}: {e}", call=call) from e

    def _headers(self, content_type: str) -> dict[str, str]:
        headers = {"Accept": "application/json", "User-Agent": f"{COMPONENT}-agent",
                   **({"Content-Type": content_type} if content_type else {})}
        for auth in self.configuration.auth_settings().values():   # the token, renewed where it is a file
            if auth.get("in") == "header" and auth.get("value"):
                headers[auth["key"]] = auth["value"]
        return headers


def _pod_path(pod: PodRef) -> str:
    return f"/api/v1/namespaces/{_quoted(pod.namespace)}/pods/{_quoted(pod.name)}"


def _quoted(name: str) -> str:
    return urllib.parse.quote(name, safe="")


def _bounded_answer(response: Any, deadline: float, limit: int) -> bytes:
    """At most `limit` bytes of the answer, read until `deadline`. A longer or slower answer is
    cut and its connection closed rather than read on."""
    kept = bytearray()
    try:
        while len(kept) <= limit and time.monotonic() < deadline:
            chunk = response.read1(16 << 10, decode_content=False)   # one receive at most: a trickle cannot hold it
            if not chunk:
                response.release_conn()   # read whole: the connection can serve the next call
                return bytes(kept)
            kept += chunk
        response.close()
        response.release_conn()
        return bytes(kept[:limit])
    except BaseException:
        response.close()
        raise


def _expect_success(status: int, answer: bytes, call: str) -> None:
    if 200 <= status < 300:
        return
    # Another try may work after a timeout, a throttle or a server error; a refusal (403, 404, 422) stays one.
    raise ApiFailure(f"http-{status}", answer[:300].decode("utf-8", "replace"),
                     retry=status in (408, 429) or status >= 500, call=call)


def _failure_reason(e: BaseException) -> str:
    cause = e.reason if isinstance(e, urllib3.exceptions.MaxRetryError) else e
    if isinstance(cause, urllib3.exceptions.NewConnectionError):   # a ConnectTimeoutError too, for urllib3 1.x's sake
        return "unreachable"
    if isinstance(cause, (urllib3.exceptions.TimeoutError, TimeoutError)):
        return "timeout"
    if isinstance(cause, (urllib3.exceptions.HTTPError, OSError)):
        return "unreachable"
    return "other"


def connect(kubeconfig: str | None, credentials_root: str, timeout_s: float) -> ApiServer:
    """A kubeconfig's connection, or the pod's ServiceAccount's (under `credentials_root`: the
    installer runs the agent in the host's mount namespace and reads its pod's token through
    /proc/PID/root)."""
    from kubernetes import client, config
    from kubernetes.config.incluster_config import InClusterConfigLoader
    if kubeconfig:
        config.load_kube_config(kubeconfig)  # type: ignore[no-untyped-call]
    else:
        account = os.path.join(credentials_root, SERVICE_ACCOUNT)
        InClusterConfigLoader(token_filename=os.path.join(account, "token"),  # type: ignore[no-untyped-call]
                              cert_filename=os.path.join(account, "ca.crt")).load_and_set()
    return ApiServer(client.ApiClient(), timeout_s)


# What the agent does, and how it tells

class Health:
    """Whether the agent does its job, for /readyz: the API server takes what it sends (the last
    FAILED_IN_A_ROW calls for Events and pods did not all fail) and, where it was asked to, the
    node's label is set."""

    def __init__(self, labelling: bool) -> None:
        self._lock = threading.Lock()
        self._failed_in_a_row = 0
        self._posted = 0
        self._last_failure = ""
        self._label_pending = labelling
        self._label_failure = "trying"

    def posted(self) -> None:
        with self._lock:
            self._failed_in_a_row, self._posted = 0, self._posted + 1

    def answered(self) -> None:
        """A call other than an Event's post did its work."""
        with self._lock:
            self._failed_in_a_row = 0

    def failed(self, why: str) -> None:
        with self._lock:
            self._failed_in_a_row += 1
            self._last_failure = why

    def labelled(self) -> None:
        with self._lock:
            self._label_pending = False

    def label_failed(self, why: str) -> None:
        with self._lock:
            self._label_failure = why

    def failing(self) -> bool:
        with self._lock:
            return self._failed_in_a_row >= FAILED_IN_A_ROW

    def verdict(self) -> tuple[bool, str]:
        with self._lock:
            if self._failed_in_a_row >= FAILED_IN_A_ROW:
                return False, (f"not ready: the last {self._failed_in_a_row} calls to the API server failed "
                               f"({self._last_failure})")
            if self._label_pending:
                return False, f"not ready: the node is not labelled yet ({self._label_failure})"
            return True, f"ready: {self._posted} Events posted"


@dataclass(frozen=True)
class Counters:
    posted: Counter
    api_errors: Counter   # by call (event, label, pod, condition) and reason
    dropped: Counter      # by why: refused by the API server, or pushed out of a full backlog
    conditions: Counter   # gate conditions set, by status

    @classmethod
    def on(cls, registry: CollectorRegistry) -> "Counters":
        return cls(Counter("rewarm_agent_events_posted", "Kubernetes Events posted.", registry=registry),
                   Counter("rewarm_agent_api_errors", "Calls to the API server that failed, by call and reason.",
                           ("call", "reason"), registry=registry),
                   Counter("rewarm_agent_events_dropped", "Events and conditions given up, by why.", ("why",),
                           registry=registry),
                   Counter("rewarm_agent_gate_conditions_set",
                           f"{READY_CONDITION} conditions set on pods that list the readiness gate, by status.",
                           ("status",), registry=registry))


Work = PodEvent | GateWork


class Courier:
    """Posts each pod's Event and sets its gate condition, in the order of the records: at once while
    the API server takes them; into the backlog (at most BACKLOG, the oldest given up first) after a
    failure that another try may mend, and, in order behind it, while the backlog holds any or the
    last calls failed (a failing API server is not waited on for each new record). The backlog is
    tried again, oldest first, one retry period (the API timeout) after its last failure."""

    def __init__(self, api: ApiServer, node: str, health: Health, counters: Counters) -> None:
        self.api, self.node, self.health, self.counters = api, node, health, counters
        self.gate = Gate()
        self.backlog: deque[Work] = deque()
        self.next_retry = 0.0

    def send(self, record: Mapping[str, Any]) -> None:
        for work in (pod_event(record), self.gate.work(record)):
            if work is not None:
                self.submit(work)

    def submit(self, work: Work) -> None:
        if self.health.failing() or self.backlog:   # don't wait on a failing API server for each new record
            self._keep(work)
        elif not self._do(work):
            self._keep(work)

    def retry(self) -> None:
        while self.backlog and time.monotonic() >= self.next_retry:
            work = self.backlog.popleft()
            if not self._do(work):
                self.backlog.appendleft(work)

    def _keep(self, work: Work) -> None:
        if len(self.backlog) >= BACKLOG:
            self.backlog.popleft()
            self.counters.dropped.labels("backlog-full").inc()
        self.backlog.append(work)

    def _do(self, work: Work) -> bool:
        """True where the work is done with: done, or refused for good (dropped)."""
        try:
            if isinstance(work, PodEvent):
                self._post(work)
            else:
                self._gate(work)
        except ApiFailure as f:
            self.counters.api_errors.labels(f.call, f.reason).inc()
            self.health.failed(str(f))
            print(f"rewarm agent: {_what(work)} of {work_pod(work)} not done: {f}", file=sys.stderr, flush=True)
            if f.retry:
                self.next_retry = time.monotonic() + self.api.timeout_s
                return False
            self.counters.dropped.labels("refused").inc()
        return True

    def _post(self, e: PodEvent) -> None:
        self.api.create_event(e, self.node)
        self.counters.posted.inc()
        self.health.posted()

    def _gate(self, work: GateWork) -> None:
        """Read the pod (the gate's presence, its uid), then set its condition or warn that it has no
        gate. A pod that is gone, or whose name another pod has now, is left alone."""
        facts = self.api.pod(work.pod)
        self.health.answered()
        if facts is None or (work.pod.uid and facts.uid != work.pod.uid):
            return
        pod = replace(work.pod, uid=facts.uid)
        if facts.gated and work.verdict is not None and facts.gate != _shown(work.verdict):
            if self.api.set_condition(pod, work.verdict, facts):
                self.counters.conditions.labels(_shown(work.verdict)[0]).inc()
                print(f"rewarm agent: {pod.namespace}/{pod.name} {READY_CONDITION}={_shown(work.verdict)[0]} "
                      f"({work.verdict.reason})", flush=True)
        elif not facts.gated and work.capturing is not None:
            self._post(ungated_warning(pod, facts.ready, work.capturing))


def _shown(verdict: Verdict) -> tuple[str, str]:
    """The condition's status and reason, as the pod shows them."""
    return ("True" if verdict.open else "False"), verdict.reason


def _what(work: Work) -> str:
    return f"event {work.reason}" if isinstance(work, PodEvent) else f"{READY_CONDITION} condition"


def work_pod(work: Work) -> str:
    return f"{work.namespace}/{work.pod}" if isinstance(work, PodEvent) else f"{work.pod.namespace}/{work.pod.name}"


def catch_up(event_log: str, courier: Courier) -> int:
    """At the agent's start, the gates that the log's last records (at most CATCH_UP_RECORDS, of the
    last CATCH_UP_S) ask for: while no agent followed the log (the DaemonSet rolling out a new
    version, say), a pod may have been restored or captured, and behind its gate it would wait for
    ever. Only the gates, and each pod's last word: those records' Events are not posted again, and
    no Warning comes for a capture long begun. Returns how many pods it asked about."""
    since = clock.rfc3339_ns(time.time() - CATCH_UP_S)
    recent: deque[bytes] = deque(maxlen=CATCH_UP_RECORDS)
    for line, _ in logs.lines_after(event_log, logs.Position()):
        recent.append(line)
    latest: dict[PodRef, GateWork] = {}
    for line in recent:
        record = logs.record_of(line)
        if record is None or str(record.get("time", "")) < since:
            continue
        work = courier.gate.work(record)   # the gate remembers the captures under way, as when following
        if work is not None and work.verdict is not None:
            latest[work.pod] = replace(work, capturing=None)
    for work in latest.values():
        courier.submit(work)
    return len(latest)


def keep_labelling(api: ApiServer, node: str, ready: bool, health: Health, counters: Counters) -> None:
    """Label the node (or take the label off) in the background, trying again until it is done:
    /metrics and /readyz answer meanwhile, /readyz saying not ready."""
    def until_done() -> None:
        while True:
            try:
                api.label(node, ready)
            except ApiFailure as f:
                counters.api_errors.labels(f.call, f.reason).inc()
                health.label_failed(str(f))
                print(f"rewarm agent: node {node} not labelled yet: {f}", file=sys.stderr, flush=True)
                time.sleep(api.timeout_s)
                continue
            health.labelled()
            print(f"rewarm agent: node {node} labelled {NODE_LABEL}={'ready' if ready else '(none)'}", flush=True)
            return
    threading.Thread(target=until_done, name="label", daemon=True).start()


class _Server(ThreadingMixIn, WSGIServer):
    daemon_threads = True   # a stuck scraper does not hold the agent's exit


class _Quiet(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass   # a probe every few seconds is not news


def serve(port: int, registry: CollectorRegistry, health: Health) -> None:
    """/readyz (200 ready, 503 not, and why) and /metrics (any other path) on `port`."""
    metrics_app = make_wsgi_app(registry)

    def app(environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        if environ.get("PATH_INFO") != "/readyz":
            answer: Iterable[bytes] = metrics_app(environ, start_response)
            return answer
        ready, why = health.verdict()
        start_response("200 OK" if ready else "503 Service Unavailable", [("Content-Type", "text/plain; charset=utf-8")])
        return [why.encode() + b"\n"]
    server = make_server("0.0.0.0", port, app, _Server, _Quiet)
    threading.Thread(target=server.serve_forever, name="http", daemon=True).start()


class Label(Enum):
    SET = "set"
    REMOVE = "remove"


@dataclass(frozen=True)
class Options:
    node: str
    metrics_port: int = 0           # 0: no /metrics, no /readyz
    label: Label | None = None      # set or take off the node's label first (in the background)
    store: str | None = None        # whose use /metrics reports; None: the node config's ("": none)


def _store_of(options: Options) -> str:
    if options.store is not None:
        return options.store
    try:
        return settings_file.load().store
    except SettingsError as e:   # the metrics of the event log are still served
        print(f"rewarm agent: no store metrics: {e}", file=sys.stderr, flush=True)
        return ""


def run(event_log: str, api: ApiServer, options: Options) -> None:
    """Serve /metrics and /readyz, label the node if asked, then post the Events of what the log
    records from now on, for ever."""
    health = Health(labelling=options.label is not None)
    store = _store_of(options)
    registry = metrics.live_registry(lambda: metrics.served(event_log, store))   # what poststop writes, too
    counters = Counters.on(registry)
    courier = Courier(api, options.node, health, counters)
    Gauge("rewarm_agent_ready", "1 while /readyz says ready.", registry=registry).set_function(
        lambda: float(health.verdict()[0]))
    Gauge("rewarm_agent_event_backlog", "Events waiting for another try.", registry=registry).set_function(
        lambda: float(len(courier.backlog)))
    if options.metrics_port:
        serve(options.metrics_port, registry, health)   # first: nothing below may keep it from answering
    batches = logs.follow(event_log, POLL_S)   # from here on; what came before, catch_up (for the gates)
    print(f"rewarm agent: {event_log} -> Kubernetes Events of {options.node}'s pods"
          + (f", /metrics and /readyz on :{options.metrics_port}" if options.metrics_port else ""), flush=True)
    if options.label is not None:
        keep_labelling(api, options.node, options.label is Label.SET, health, counters)
    caught_up = catch_up(event_log, courier)
    if caught_up:
        print(f"rewarm agent: {READY_CONDITION} of {caught_up} pods set as their last records ask", flush=True)
    for batch in batches:
        for record in batch:
            courier.send(record)
        courier.retry()
