"""`rewarm agent`: what rewarm did on this node, where an operator looks. It follows the event log
and posts each restore, cold start, refusal and capture of a pod as a Kubernetes Event on that pod
(`kubectl describe pod`, `kubectl get events`), and serves the event log's metrics on /metrics.

It runs in the node DaemonSet with the node's event log mounted, under a ServiceAccount that may
create events. An Event that cannot be posted is logged and dropped: the node's work never waits
on the API server.
"""
from __future__ import annotations

import datetime
import os
import sys
from dataclasses import dataclass
from typing import Any, Iterable, Mapping

from runtime.adapters import logs
from runtime.model.events import EventKind

COMPONENT = "rewarm"


@dataclass(frozen=True)
class PodEvent:
    namespace: str
    pod: str
    type: str        # Normal or Warning, as Kubernetes spells them
    reason: str      # CamelCase, what `kubectl get events` shows in REASON
    message: str


def _stages(record: Mapping[str, Any]) -> str:
    stages = record.get("stages") or {}
    top = sorted(((k, v) for k, v in stages.items() if isinstance(v, (int, float))), key=lambda kv: -kv[1])[:4]
    return ", ".join(f"{k} {v:.2f}s" for k, v in top)


def pod_event(record: Mapping[str, Any]) -> PodEvent | None:
    """The Kubernetes Event for one event-log record, or None (not about a pod, or not news)."""
    pod, namespace, snapshot = record.get("pod"), record.get("namespace"), record.get("snapshot", "")
    if not pod or not namespace:
        return None
    kind, seconds = record.get("event"), record.get("seconds")
    if kind == EventKind.RESTORED.value:
        stages = _stages(record)
        return PodEvent(namespace, pod, "Normal", "Restored",
                        f"restored from snapshot {snapshot} in {seconds}s" + (f" ({stages})" if stages else ""))
    if kind == EventKind.COLD_START.value:
        return PodEvent(namespace, pod, "Warning", "ColdStart",
                        f"not restored from snapshot {snapshot}, started cold: {record.get('reason', '')}")
    if kind == EventKind.RESTORE_REFUSED.value:
        return PodEvent(namespace, pod, "Warning", "RestoreRefused",
                        f"not restored from snapshot {snapshot} and not started (fallback: fail): "
                        f"{record.get('reason', '')}")
    if kind == EventKind.CAPTURED.value:
        size = record.get("bytes")
        return PodEvent(namespace, pod, "Normal", "Captured",
                        f"captured as snapshot {snapshot} in {seconds}s"
                        + (f" ({int(size) / 2**30:.2f} GiB)" if isinstance(size, (int, float)) else ""))
    if kind == EventKind.CAPTURE_FAILED.value:
        return PodEvent(namespace, pod, "Warning", "CaptureFailed",
                        f"capture as snapshot {snapshot} failed, the pod serves on: {record.get('reason', '')}")
    return None


def body(e: PodEvent, node: str, when: datetime.datetime) -> Any:
    from kubernetes import client
    return client.CoreV1Event(
        metadata=client.V1ObjectMeta(generate_name=f"{e.pod}.", namespace=e.namespace),
        involved_object=client.V1ObjectReference(kind="Pod", api_version="v1", name=e.pod, namespace=e.namespace),
        type=e.type, reason=e.reason, message=e.message[:1024], count=1,
        first_timestamp=when, last_timestamp=when,
        source=client.V1EventSource(component=COMPONENT, host=node),
        reporting_component=COMPONENT, reporting_instance=node)


def post(api: Any, records: Iterable[Mapping[str, Any]], node: str) -> int:
    """Post the Event of each record; returns how many were posted."""
    from kubernetes.client.exceptions import ApiException
    from urllib3.exceptions import HTTPError
    posted = 0
    for record in records:
        e = pod_event(record)
        if e is None:
            continue
        try:
            api.create_namespaced_event(e.namespace, body(e, node, datetime.datetime.now(datetime.timezone.utc)))
            posted += 1
        except (ApiException, HTTPError, OSError) as err:   # refused, unreachable, timed out
            print(f"rewarm agent: event {e.reason} of {e.namespace}/{e.pod} not posted: {err}", file=sys.stderr)
    return posted


SERVICE_ACCOUNT = "var/run/secrets/kubernetes.io/serviceaccount"
NODE_LABEL = "rewarm.dev/runtime"   # "ready" where the handler is installed: the RuntimeClass selects it


def api_client(kubeconfig: str | None, credentials_root: str = "/") -> Any:
    """A kubeconfig's, or the pod's ServiceAccount's (under `credentials_root`: the installer runs
    the agent in the host's mount namespace and reads its pod's token through /proc/PID/root)."""
    from kubernetes import client, config
    from kubernetes.config.incluster_config import InClusterConfigLoader
    if kubeconfig:
        config.load_kube_config(kubeconfig)  # type: ignore[no-untyped-call]
    else:
        account = os.path.join(credentials_root, SERVICE_ACCOUNT)
        InClusterConfigLoader(token_filename=os.path.join(account, "token"),  # type: ignore[no-untyped-call]
                              cert_filename=os.path.join(account, "ca.crt")).load_and_set()
    return client.CoreV1Api()


def label(api: Any, node: str, ready: bool) -> None:
    """Set (or take off) the label the RuntimeClass's nodeSelector asks for."""
    api.patch_node(node, {"metadata": {"labels": {NODE_LABEL: "ready" if ready else None}}})


def serve_metrics(event_log: str, port: int) -> None:
    """/metrics on `port`: the same metrics as the textfile, from the event log at each scrape."""
    from prometheus_client import start_http_server

    from runtime.adapters import metrics
    start_http_server(port, registry=metrics.live_registry(lambda: logs.read_events(event_log)))


def run(event_log: str, api: Any, node: str, metrics_port: int = 0) -> None:
    if metrics_port:
        serve_metrics(event_log, metrics_port)
    records = logs.follow_events(event_log)
    print(f"rewarm agent: {event_log} -> Kubernetes Events of {node}'s pods"
          + (f", /metrics on :{metrics_port}" if metrics_port else ""), flush=True)
    post(api, records, node)
