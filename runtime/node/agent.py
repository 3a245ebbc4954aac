"""`rewarm agent`: what rewarm did on this node, where an operator looks. It follows the event log
and posts each restore, cold start, refusal and capture of a pod as a Kubernetes Event on that pod
(`kubectl describe pod`, `kubectl get events`), serves the event log's metrics and its own on
/metrics and its readiness on /readyz, and labels the node for the RuntimeClass when asked.

It runs in the node DaemonSet with the node's event log mounted, under a ServiceAccount that may
create events. The node's work never waits on the API server, and the agent survives any API
server: every call has a time limit and reads at most ANSWER_LIMIT bytes of the answer, whatever it
holds (an Event's answer is never parsed); every failure is counted. An Event that cannot be
posted is kept and tried again (the oldest dropped beyond BACKLOG); each has a name of its own, so a
retry of one that did arrive is refused as a duplicate and none is made twice. /readyz answers 200
while Events are being posted (not the last FAILED_IN_A_ROW failed) and the node is labelled as
asked; /metrics staying up says nothing about that.
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
from collections import deque
from dataclasses import dataclass
from enum import Enum
from socketserver import ThreadingMixIn
from typing import Any, Iterable, Mapping
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server
from wsgiref.types import StartResponse, WSGIEnvironment

import urllib3
from prometheus_client import CollectorRegistry, Counter, Gauge, make_wsgi_app

from runtime.adapters import logs, metrics, settings_file
from runtime.model.errors import SettingsError
from runtime.model.events import EventKind

COMPONENT = "rewarm"
SERVICE_ACCOUNT = "var/run/secrets/kubernetes.io/serviceaccount"
NODE_LABEL = "rewarm.dev/runtime"   # "ready" where the handler is installed: the RuntimeClass selects it

ANSWER_LIMIT = 64 << 10   # an Event's answer is about 1 KiB: no answer is read further
FAILED_IN_A_ROW = 3       # this many failed posts in a row: not ready, and new Events wait in the backlog
BACKLOG = 1000            # Events kept for another try while the API server fails
POLL_S = 0.5              # how often the event log is looked at


@dataclass(frozen=True)
class PodEvent:
    namespace: str
    pod: str
    type: str        # Normal or Warning, as Kubernetes spells them
    reason: str      # CamelCase, what `kubectl get events` shows in REASON
    message: str
    name: str = ""   # the Event's own name: its pod's and a digest of its record


def _stages(record: Mapping[str, Any]) -> str:
    stages = record.get("stages") or {}
    top = sorted(((k, v) for k, v in stages.items() if isinstance(v, (int, float))), key=lambda kv: -kv[1])[:4]
    return ", ".join(f"{k} {v:.2f}s" for k, v in top)


def _name(pod: str, record: Mapping[str, Any]) -> str:
    """The same record always gives the same name (a DNS subdomain, as Event names are): a post
    made twice is refused the second time (409) instead of making two Events."""
    digest = hashlib.sha256(json.dumps(record, sort_keys=True, default=str).encode()).hexdigest()[:16]
    return f"{pod[:236].rstrip('.-')}.{digest}"


def pod_event(record: Mapping[str, Any]) -> PodEvent | None:
    """The Kubernetes Event for one event-log record, or None (not about a pod, or not news)."""
    pod, namespace, snapshot = record.get("pod"), record.get("namespace"), record.get("snapshot", "")
    if not isinstance(pod, str) or not isinstance(namespace, str) or not pod or not namespace:
        return None
    kind, seconds = record.get("event"), record.get("seconds")
    if kind == EventKind.RESTORED.value:
        stages = _stages(record)
        said = ("Normal", "Restored",
                f"restored from snapshot {snapshot} in {seconds}s" + (f" ({stages})" if stages else ""))
    elif kind == EventKind.COLD_START.value:
        said = ("Warning", "ColdStart",
                f"not restored from snapshot {snapshot}, started cold: {record.get('reason', '')}")
    elif kind == EventKind.RESTORE_REFUSED.value:
        said = ("Warning", "RestoreRefused",
                f"not restored from snapshot {snapshot} and not started (fallback: fail): {record.get('reason', '')}")
    elif kind == EventKind.CAPTURED.value:
        size = record.get("bytes")
        said = ("Normal", "Captured", f"captured as snapshot {snapshot} in {seconds}s"
                + (f" ({int(size) / 2**30:.2f} GiB)" if isinstance(size, (int, float)) else ""))
    elif kind == EventKind.CAPTURE_FAILED.value:
        said = ("Warning", "CaptureFailed",
                f"capture as snapshot {snapshot} failed, the pod serves on: {record.get('reason', '')}")
    else:
        return None
    return PodEvent(namespace, pod, *said, name=_name(pod, record))


def body(e: PodEvent, node: str, when: datetime.datetime) -> dict[str, Any]:
    """The core/v1 Event, as the API server takes it."""
    stamp = when.astimezone(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    return {"apiVersion": "v1", "kind": "Event",
            "metadata": {"name": e.name, "namespace": e.namespace},
            "involvedObject": {"kind": "Pod", "apiVersion": "v1", "name": e.pod, "namespace": e.namespace},
            "type": e.type, "reason": e.reason, "message": e.message[:1024], "count": 1,
            "firstTimestamp": stamp, "lastTimestamp": stamp,
            "source": {"component": COMPONENT, "host": node},
            "reportingComponent": COMPONENT, "reportingInstance": node}


# The API server, as the agent uses it

class ApiFailure(Exception):
    """A call that did not do its work: `reason` is the metric's label (timeout, unreachable, other,
    or http-STATUS); `retry` says whether the same call may work later."""

    def __init__(self, reason: str, detail: str, retry: bool = True) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason, self.retry = reason, retry


class ApiServer:
    """Two calls (create an Event, patch the node's labels) over the kubernetes client's
    connection: its host, TLS and credentials (a ServiceAccount token it renews included). The
    requests are made here rather than through its API methods, which read a whole answer (an error's
    too) into memory and deserialize it: here each call ends within about twice `timeout_s` and
    reads at most ANSWER_LIMIT bytes of any answer."""

    def __init__(self, api_client: Any, timeout_s: float) -> None:
        self.configuration = api_client.configuration
        self.pool = api_client.rest_client.pool_manager
        self.timeout_s = timeout_s

    def create_event(self, e: PodEvent, node: str) -> None:
        status, answer = self._call("POST", f"/api/v1/namespaces/{_quoted(e.namespace)}/events",
                                    body(e, node, datetime.datetime.now(datetime.timezone.utc)), "application/json")
        if status != 409:   # AlreadyExists: an earlier try of this same Event did arrive
            _expect_success(status, answer)

    def label(self, node: str, ready: bool) -> None:
        """Set (or take off) the label the RuntimeClass's nodeSelector asks for."""
        patch = {"metadata": {"labels": {NODE_LABEL: "ready" if ready else None}}}
        _expect_success(*self._call("PATCH", f"/api/v1/nodes/{_quoted(node)}", patch,
                                    "application/strategic-merge-patch+json"))

    def _call(self, method: str, path: str, payload: Mapping[str, Any], content_type: str) -> tuple[int, bytes]:
        deadline = time.monotonic() + self.timeout_s
        try:
            response = self.pool.request(method, self.configuration.host.rstrip("/") + path,
                                         body=json.dumps(payload).encode(), headers=self._headers(content_type),
                                         timeout=urllib3.Timeout(total=self.timeout_s), retries=False,
                                         preload_content=False)
            return response.status, _bounded_answer(response, deadline)
        except Exception as e:   # whatever the client or the connection raise, it costs this call only
            raise ApiFailure(_failure_reason(e), f"{type(e).__name__}: {e}") from e

    def _headers(self, content_type: str) -> dict[str, str]:
        headers = {"Content-Type": content_type, "Accept": "application/json", "User-Agent": f"{COMPONENT}-agent"}
        for auth in self.configuration.auth_settings().values():   # the token, renewed where it is a file
            if auth.get("in") == "header" and auth.get("value"):
                headers[auth["key"]] = auth["value"]
        return headers


def _quoted(name: str) -> str:
    return urllib.parse.quote(name, safe="")


def _bounded_answer(response: Any, deadline: float) -> bytes:
    """At most ANSWER_LIMIT bytes of the answer, read until `deadline`. A longer or slower answer is
    cut and its connection closed rather than read on."""
    kept = bytearray()
    try:
        while len(kept) <= ANSWER_LIMIT and time.monotonic() < deadline:
            chunk = response.read1(16 << 10, decode_content=False)   # one receive at most: a trickle cannot hold it
            if not chunk:
                response.release_conn()   # read whole: the connection can serve the next call
                return bytes(kept)
            kept += chunk
        response.close()
        response.release_conn()
        return bytes(kept[:ANSWER_LIMIT])
    except BaseException:
        response.close()
        raise


def _expect_success(status: int, answer: bytes) -> None:
    if 200 <= status < 300:
        return
    # Another try may work after a timeout, a throttle or a server error; a refusal (403, 404, 422) stays one.
    raise ApiFailure(f"http-{status}", answer[:300].decode("utf-8", "replace"),
                     retry=status in (408, 429) or status >= 500)


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
    """Whether the agent does its job, for /readyz: Events reach the API server (the last
    FAILED_IN_A_ROW posts did not all fail) and, where it was asked to, the node's label is set."""

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
                return False, f"not ready: the last {self._failed_in_a_row} tries to post an Event failed ({self._last_failure})"
            if self._label_pending:
                return False, f"not ready: the node is not labelled yet ({self._label_failure})"
            return True, f"ready: {self._posted} Events posted"


@dataclass(frozen=True)
class Counters:
    posted: Counter
    api_errors: Counter   # by call (event, label) and reason
    dropped: Counter      # by why: refused by the API server, or pushed out of a full backlog

    @classmethod
    def on(cls, registry: CollectorRegistry) -> "Counters":
        return cls(Counter("rewarm_agent_events_posted", "Kubernetes Events posted.", registry=registry),
                   Counter("rewarm_agent_api_errors", "Calls to the API server that failed, by call and reason.",
                           ("call", "reason"), registry=registry),
                   Counter("rewarm_agent_events_dropped", "Events given up, by why.", ("why",), registry=registry))


class Courier:
    """Posts each pod's Event: at once while the API server takes them; into the backlog (at most
    BACKLOG, the oldest given up first) after a failure that another try may mend, and, in order
    behind it, while the backlog holds any or the last posts failed (a failing API server is not
    waited on for each new Event). The backlog is tried again, oldest first, one retry period
    (the API timeout) after its last failure."""

    def __init__(self, api: ApiServer, node: str, health: Health, counters: Counters) -> None:
        self.api, self.node, self.health, self.counters = api, node, health, counters
        self.backlog: deque[PodEvent] = deque()
        self.next_retry = 0.0

    def send(self, record: Mapping[str, Any]) -> None:
        e = pod_event(record)
        if e is None:
            return
        if self.health.failing() or self.backlog:   # don't wait on a failing API server for each new Event
            self._keep(e)
        elif not self._post(e):
            self._keep(e)

    def retry(self) -> None:
        while self.backlog and time.monotonic() >= self.next_retry:
            e = self.backlog.popleft()
            if not self._post(e):
                self.backlog.appendleft(e)

    def _keep(self, e: PodEvent) -> None:
        if len(self.backlog) >= BACKLOG:
            self.backlog.popleft()
            self.counters.dropped.labels("backlog-full").inc()
        self.backlog.append(e)

    def _post(self, e: PodEvent) -> bool:
        """True where the Event is done with: posted, or refused for good (dropped)."""
        try:
            self.api.create_event(e, self.node)
        except ApiFailure as f:
            self.counters.api_errors.labels("event", f.reason).inc()
            self.health.failed(str(f))
            print(f"rewarm agent: event {e.reason} of {e.namespace}/{e.pod} not posted: {f}", file=sys.stderr, flush=True)
            if f.retry:
                self.next_retry = time.monotonic() + self.api.timeout_s
                return False
            self.counters.dropped.labels("refused").inc()
            return True
        self.counters.posted.inc()
        self.health.posted()
        return True


def keep_labelling(api: ApiServer, node: str, ready: bool, health: Health, counters: Counters) -> None:
    """Label the node (or take the label off) in the background, trying again until it is done:
    /metrics and /readyz answer meanwhile, /readyz saying not ready."""
    def until_done() -> None:
        while True:
            try:
                api.label(node, ready)
            except ApiFailure as f:
                counters.api_errors.labels("label", f.reason).inc()
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
    batches = logs.follow(event_log, POLL_S)
    print(f"rewarm agent: {event_log} -> Kubernetes Events of {options.node}'s pods"
          + (f", /metrics and /readyz on :{options.metrics_port}" if options.metrics_port else ""), flush=True)
    if options.label is not None:
        keep_labelling(api, options.node, options.label is Label.SET, health, counters)
    for batch in batches:
        for record in batch:
            courier.send(record)
        courier.retry()
