"""On-ready capture: the watcher rewarm-runc starts beside a cold-started container that asked for
`rewarm.dev/capture: on-ready`.

It waits for the container to run and become ready (its ready file exists inside the container, or
its ready URL answers inside the pod's network namespace), captures it while it keeps running, and
exits. It also exits, doing nothing but an event, when the container goes away first (nothing
outlives the container) or is not ready within ready_timeout_s. While it waits it starts no
process: it reads the runtime's state file and /proc. The snapshot becomes usable with the store's
one atomic rename.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from dataclasses import asdict, dataclass

from runtime.adapters import logs, netns_http, settings_file, store
from runtime.adapters.files import start_time
from runtime.adapters.runc import Runc
from runtime.engine import capture
from runtime.model.errors import RewarmError
from runtime.model.events import EventKind
from runtime.model.settings import Settings

POLL_S = 0.25
APPEAR_TIMEOUT_S = 120.0   # runc create failed if the container never shows up


@dataclass(frozen=True)
class Job:
    runtime_root: str
    container_id: str
    namespace: str
    name: str
    ready_file: str
    ready_http: str | None
    push_to: str | None = None      # rewarm.dev/push: on-capture: the snapshot-ref to push to


def spawn(job: Job) -> None:
    """Start the watcher detached from the caller's stdio (those are the container's log pipes)."""
    subprocess.Popen([sys.executable, "-m", "runtime.engine.on_ready", json.dumps(asdict(job))],
                     stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                     close_fds=True, start_new_session=True, cwd="/")


def is_ready(job: Job, pid: int) -> bool:
    if job.ready_http:  # GET inside the container's network namespace (the pod's)
        return netns_http.request(f"/proc/{pid}/ns/net", job.ready_http, timeout=2.0)[0] == 200
    return os.path.exists(f"/proc/{pid}/root{job.ready_file}")


def wait_until_ready(settings: Settings, job: Job) -> str | None:
    """None once ready; otherwise why the watch ended. Each look costs a few reads of files (the
    runtime's state file, /proc): no process is started however long the pod takes, and the
    watch gives up after ready_timeout_s."""
    give_up = time.monotonic() + settings.ready_timeout_s
    init = _running_init(settings, job, give_up)
    if isinstance(init, str):
        return init
    pid, start = init
    while not is_ready(job, pid):
        if start_time(pid) != start:
            return "container stopped before it was ready"
        if time.monotonic() > give_up:
            return _gave_up(settings)
        time.sleep(POLL_S)
    return None


def _running_init(settings: Settings, job: Job, give_up: float) -> tuple[int, int] | str:
    """The pid and start time of the container's init once it runs (its start time tells it
    from a later process with its pid); otherwise why the watch ended."""
    runc = Runc(settings.runtime, job.runtime_root)
    appeared, appear_by = False, time.monotonic() + APPEAR_TIMEOUT_S
    while True:
        now = runc.status(job.container_id)
        if now is None and (appeared or time.monotonic() > appear_by):
            return "container is gone"
        if now is not None:
            appeared = True
            if now.status == "stopped":
                return "container stopped before it was ready"
            start = start_time(now.pid) if now.status == "running" else None
            if start is not None:
                return now.pid, start
        if time.monotonic() > give_up:
            return _gave_up(settings)
        time.sleep(POLL_S)


def _gave_up(settings: Settings) -> str:
    return f"not ready within ready_timeout_s ({settings.ready_timeout_s}s): the watch gave up"


def run(settings: Settings, job: Job) -> int:
    why = wait_until_ready(settings, job)
    if why:
        logs.event(settings.event_log, EventKind.CAPTURE_SKIPPED, container=job.container_id,
                   namespace=job.namespace, snapshot=job.name, reason=why)
        return 0
    try:
        entry = capture.run(settings, capture.Request(job.runtime_root, job.container_id, job.name, job.namespace,
                                                      leave_running=True, skip_if_present=True))
    except (RewarmError, OSError) as e:
        logs.event(settings.event_log, EventKind.CAPTURE_FAILED, container=job.container_id,
                   namespace=job.namespace, snapshot=job.name, reason=f"on-ready capture: {e}")
        return 1
    store.touch_used(entry)
    if job.push_to:
        from runtime.engine import push
        from runtime.engine.formats import Caller
        try:
            push.push(settings, job.name, job.push_to, job.namespace, caller=Caller(quiet=True))   # its events say how
        except (RewarmError, OSError):
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(run(settings_file.load(), Job(**json.loads(sys.argv[1]))))
