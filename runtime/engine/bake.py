"""`rewarm bake`: make a snapshot from an image, for node images or a warm-up job, with no pod spec.

It runs the image as a pod through CRI on the rewarm handler with on-ready capture, waits for the
snapshot, and removes the pod. The snapshot is what the first pod of a deployment would have
captured, so later pods with the same image and command restore from it.
"""
from __future__ import annotations

import shutil
import tempfile
import time
from dataclasses import dataclass
from typing import Any

from runtime.observe import logs
from runtime.snapshot import store
from runtime.observe.progress import Phases
from runtime.clients import cri
from runtime.model import annotations as ann
from runtime.model.errors import CaptureFailed, RewarmError
from runtime.model.events import EventKind
from runtime.model.settings import Settings

FINISHED = (EventKind.CAPTURED.value, EventKind.RESTORED.value)   # restored: a fitting entry exists already
GAVE_UP = (EventKind.CAPTURE_FAILED.value, EventKind.CAPTURE_SKIPPED.value)


def _events_for(event_log: str, container_id: str) -> list[dict[str, Any]]:
    return [e for e in logs.read_events(event_log) if e.get("container") == container_id]


@dataclass(frozen=True, kw_only=True)
class Bake:
    """What to bake: the image and command a pod would run, and when it counts as ready."""
    image: str
    name: str                        # the snapshot's
    namespace: str = "default"
    command: tuple[str, ...] = ()    # () = the image's
    env: tuple[tuple[str, str], ...] = ()
    ready_file: str | None = None
    ready_http: str | None = None
    timeout: float = 1800
    handler: str = "rewarm"

    def annotations(self) -> dict[str, str]:
        found = {ann.SNAPSHOT: self.name, ann.CAPTURE: ann.Capture.ON_READY.value}
        if self.ready_file:
            found[ann.READY_FILE] = self.ready_file
        if self.ready_http:
            found[ann.READY_HTTP] = self.ready_http
        ann.parse(found, {"args": list(self.command), "env": [f"{k}={v}" for k, v in self.env]})   # refused early
        return found


def bake(settings: Settings, address: str, job: Bake, phases: Phases | None = None) -> store.Entry:
    annotations = job.annotations()
    with cri.Client(address) as client:
        if client.image_status(job.image) is None:
            raise RewarmError(f"image {job.image} is not on this node (pull or import it first)")
    phases = phases or Phases("bake", quiet=True)
    phases.set(f"starting {job.image}")
    log_root = tempfile.mkdtemp(prefix="rewarm-bake-")
    pod = cri.Pod(address, log_root, cri.Workload(f"rewarm-bake-{job.name}", job.image, job.command, job.namespace,
                                                  annotations, dict(job.env), container_name=f"bake-{job.name}"),
                  job.handler)
    try:
        return _wait_for_capture(settings, job, pod, phases)
    finally:
        phases.finish()
        pod.delete()
        shutil.rmtree(log_root, ignore_errors=True)


def _wait_for_capture(settings: Settings, job: Bake, pod: cri.Pod, phases: Phases) -> store.Entry:
    deadline = time.monotonic() + job.timeout
    while time.monotonic() < deadline:
        for event in _events_for(settings.event_log, pod.container_id):
            if event["event"] in FINISHED:
                phases.set(f"captured as {job.namespace}/{job.name}")
                return next(e for e in store.Store(settings.store).entries(job.namespace, job.name)
                            if e.ident == event["entry"])
            if event["event"] in GAVE_UP:
                raise CaptureFailed(f"bake of {job.image}: {event['reason']}")
            if event["event"] == EventKind.COLD_START.value:
                phases.set("started, warming up until ready; then captured")
        if pod.status().state == cri.pb.CONTAINER_EXITED:
            raise CaptureFailed(f"bake of {job.image}: the container exited ({pod.status().exit_code}) before "
                                f"it was ready; its log:\n{pod.log()[-2000:]}")
        phases.tick()
        time.sleep(0.5)
    raise CaptureFailed(f"bake of {job.image}: not ready and captured within {job.timeout}s; log:\n{pod.log()[-2000:]}")
