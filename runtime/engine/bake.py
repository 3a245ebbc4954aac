"""`rewarm bake`: make a snapshot from an image, for node images or a warm-up job, with no pod spec.

It runs the image as a pod through CRI on the rewarm handler with on-ready capture, waits for the
snapshot, and removes the pod. The snapshot is what the first pod of a deployment would have
captured, so later pods with the same image and command restore from it.
"""
from __future__ import annotations

import shutil
import tempfile
import time
from typing import Any

from runtime.adapters import logs, store
from runtime.clients import cri
from runtime.model import annotations as ann
from runtime.model.errors import CaptureFailed, RewarmError
from runtime.model.events import EventKind
from runtime.model.settings import Settings

FINISHED = (EventKind.CAPTURED.value, EventKind.RESTORED.value)   # restored: a fitting entry exists already
GAVE_UP = (EventKind.CAPTURE_FAILED.value, EventKind.CAPTURE_SKIPPED.value)


def _events_for(event_log: str, container_id: str) -> list[dict[str, Any]]:
    return [e for e in logs.read_events(event_log) if e.get("container") == container_id]


def bake(settings: Settings, address: str, image: str, name: str, namespace: str, command: list[str],
         env: dict[str, str], ready_file: str | None, ready_http: str | None, timeout: float,
         handler: str = "rewarm") -> store.Entry:
    annotations = {ann.SNAPSHOT: name, ann.CAPTURE: ann.Capture.ON_READY.value}
    if ready_file:
        annotations[ann.READY_FILE] = ready_file
    if ready_http:
        annotations[ann.READY_HTTP] = ready_http
    ann.parse(annotations, {"args": command, "env": [f"{k}={v}" for k, v in env.items()]})
    with cri.Client(address) as client:
        if client.image_status(image) is None:
            raise RewarmError(f"image {image} is not on this node (pull or import it first)")
    log_root = tempfile.mkdtemp(prefix="rewarm-bake-")
    pod = cri.Pod(address, log_root, f"rewarm-bake-{name}", image, command, namespace=namespace,
                  annotations=annotations, env=env, handler=handler, container_name=f"bake-{name}")
    try:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for event in _events_for(settings.event_log, pod.container_id):
                if event["event"] in FINISHED:
                    return next(e for e in store.Store(settings.store).entries(namespace, name)
                                if e.ident == event["entry"])
                if event["event"] in GAVE_UP:
                    raise CaptureFailed(f"bake of {image}: {event['reason']}")
            if pod.status().state == cri.pb.CONTAINER_EXITED:
                raise CaptureFailed(f"bake of {image}: the container exited ({pod.status().exit_code}) before "
                                    f"it was ready; its log:\n{pod.log()[-2000:]}")
            time.sleep(0.5)
        raise CaptureFailed(f"bake of {image}: not ready and captured within {timeout}s; log:\n{pod.log()[-2000:]}")
    finally:
        pod.delete()
        shutil.rmtree(log_root, ignore_errors=True)
