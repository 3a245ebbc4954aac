"""On-ready capture: the watcher rewarm-runc starts beside a cold-started container that asked for
`rewarm.dev/capture: on-ready` (or `on-ready-then-exit`, a capture Job).

It waits for the container to run and become ready (its ready file exists inside the container, or
its ready URL answers inside the pod's network namespace), records that the capture begins (the
node agent keeps the pod out of its Services from the cold start until the capture is over),
captures it while it keeps running, pushes it where asked, and exits. It also exits, doing nothing
but an event, when the container goes away first (nothing outlives the container) or is not ready
within ready_timeout_s. While it waits it starts no process: it reads the runtime's state file and
/proc. The snapshot becomes usable with the store's one atomic rename. For a capture Job the last
step ends the container: exit 0 once the snapshot is there (and pushed), non-zero with the reason
where it is not, so that the Job completes or fails.
"""
from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field

from runtime.host import settings_file
from runtime.netns import netns_http
from runtime.observe import logs
from runtime.snapshot import store
from runtime.host.files import start_time
from runtime.container import spec_file
from runtime.container.runc import Runc
from runtime.engine import capture
from runtime.model.annotations import Capture
from runtime.model.errors import CaptureFailed, RewarmError, code_of
from runtime.model.events import EventKind, ReasonCode
from runtime.model.settings import Settings

POLL_S = 0.25
APPEAR_TIMEOUT_S = 120.0   # runc create failed if the container never shows up
STOP_GRACE_S = 30.0        # a capture Job's worker has this long to exit on SIGTERM (kubelet's default grace)
TERMINATION_LOG = "/dev/termination-log"   # kubelet's default terminationMessagePath: its file, bound in
TERMINATION_MESSAGE_MAX = 4096             # what kubelet reads of it


@dataclass(frozen=True, kw_only=True)
class Job:
    runtime_root: str
    container_id: str
    namespace: str
    name: str
    ready_file: str
    ready_http: str | None
    push_to: str | None = None      # rewarm.dev/push: on-capture: the snapshot-ref to push to
    capture: str = Capture.ON_READY.value                # or on-ready-then-exit: a capture Job's container
    pod: dict[str, str] = field(default_factory=dict)    # the pod's fields in the event log (annotations.pod_fields)

    @property
    def then_exit(self) -> bool:
        return self.capture == Capture.ON_READY_THEN_EXIT.value


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
    # Every event of this watch names the pod: the push's, and the capture's own (its worker's resume
    # hook failing, say), which know the container only.
    logs.about(container=job.container_id, namespace=job.namespace, **job.pod)
    why = wait_until_ready(settings, job)
    if why:
        logs.event(settings.event_log, EventKind.CAPTURE_SKIPPED, container=job.container_id,
                   namespace=job.namespace, snapshot=job.name, reason=why)
        return finish(settings, job, why)
    logs.event(settings.event_log, EventKind.CAPTURING, namespace=job.namespace, snapshot=job.name,
               capture=job.capture)
    try:
        entry = _capture(settings, job)
    except (RewarmError, OSError) as e:
        return finish(settings, job, f"capture as snapshot {job.namespace}/{job.name} failed: {e}")
    store.touch_used(entry)
    if job.push_to:
        from runtime.engine import push
        from runtime.engine.formats import Caller
        try:
            # the entry captured, not the name's newest: another capture may have committed since
            push.push_entry(settings, entry, job.push_to, caller=Caller(quiet=True))   # its events say how
        except (RewarmError, OSError) as e:
            return finish(settings, job, f"push of snapshot {job.namespace}/{job.name} to {job.push_to} failed: {e}")
    return finish(settings, job, None)


def _capture(settings: Settings, job: Job) -> store.Entry:
    """capture.run, plus the events it does not write itself: a failure before its pipeline began
    (capture.run records the rest; one record each, since each becomes a Kubernetes Event), and an
    entry that fitted already (another pod's capture came first)."""
    since = logs.end_of(settings.event_log)
    try:
        entry = capture.run(settings, capture.Request(job.runtime_root, job.container_id, job.name, job.namespace,
                                                      leave_running=True, skip_if_present=True))
    except (RewarmError, OSError) as e:
        if not _recorded_since(settings.event_log, since, job.container_id):
            logs.event(settings.event_log, EventKind.CAPTURE_FAILED, namespace=job.namespace, snapshot=job.name,
                       reason=f"on-ready capture: {e}", code=code_of(e).value)
        raise
    except Exception as e:   # a bug: neither a pod behind its readiness gate nor a capture Job may wait for ever
        logs.event(settings.event_log, EventKind.CAPTURE_FAILED, namespace=job.namespace, snapshot=job.name,
                   reason=f"unexpected error: {type(e).__name__}: {e}", code=ReasonCode.UNEXPECTED.value)
        raise CaptureFailed(f"unexpected error: {type(e).__name__}: {e}") from e
    if entry.manifest.source.get("container_id") != job.container_id:
        logs.event(settings.event_log, EventKind.CAPTURE_SKIPPED, namespace=job.namespace, snapshot=job.name,
                   reason=f"snapshot {job.namespace}/{job.name} that fits this container is there already "
                          f"({entry.ident})")
    return entry


def _recorded_since(event_log: str, since: logs.Position, container_id: str) -> bool:
    """Whether a capture-failed or capture-skipped of this container came into the log after `since`."""
    ended = {EventKind.CAPTURE_FAILED.value, EventKind.CAPTURE_SKIPPED.value}
    for line, _ in logs.lines_after(event_log, since):
        record = logs.record_of(line)
        if record is not None and record.get("container") == container_id and record.get("event") in ended:
            return True
    return False


# --- a capture Job's end ------------------------------------------------------------------------
def finish(settings: Settings, job: Job, failure: str | None) -> int:
    """The watch's last step, after the capture and its push: a capture Job's container is ended
    (end_job). The exit code says whether the snapshot is there (and pushed where asked)."""
    if job.then_exit:
        end_job(settings, job, failure)
    return 1 if failure else 0


def end_job(settings: Settings, job: Job, failure: str | None) -> None:
    """rewarm.dev/capture: on-ready-then-exit: end the container so that its Job completes or fails.
    Done: the worker is stopped as kubelet stops one, SIGTERM to the container's main process (its
    own shutdown: vLLM and the example workers exit 0), SIGKILL after STOP_GRACE_S. Failed: SIGKILL
    at once, so that the container exits non-zero (137) whatever the worker does on SIGTERM, and the
    Job tries again. Either way the container's termination message and the pod's log say why first."""
    runc = Runc(settings.runtime, job.runtime_root)
    now = runc.status(job.container_id)
    if now is None or now.status != "running":
        return   # it stopped by itself (before it was ready): nothing to end
    if failure:
        _tell(runc, job, now.pid, f"{failure}; the container exits non-zero so that the Job fails")
        runc.run("kill", job.container_id, "KILL")
        return
    pushed = f" and pushed to {job.push_to}" if job.push_to else ""
    _tell(runc, job, now.pid, f"captured as snapshot {job.namespace}/{job.name}{pushed}; stopping the worker so "
                              "that the Job completes")
    runc.run("kill", job.container_id, "TERM")
    if not _stopped_within(runc, job.container_id, STOP_GRACE_S):
        runc.run("kill", job.container_id, "KILL")


def _stopped_within(runc: Runc, container_id: str, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        now = runc.status(container_id)
        if now is None or now.status == "stopped":
            return True
        time.sleep(POLL_S)
    return False


def _tell(runc: Runc, job: Job, pid: int, said: str) -> None:
    """Say why a capture Job's container ends where its user looks: the container's termination
    message (`kubectl describe pod`, the Job's failed pods) and the pod's log (`kubectl logs`)."""
    state = runc.state(job.container_id) or {}
    _write_termination_message(str(state.get("bundle", "")), f"rewarm: {said}")
    _write_pod_log(pid, f"rewarm: {said}")


def _write_termination_message(bundle: str, message: str) -> None:
    """Into the host file kubelet binds at TERMINATION_LOG and reads back when the container ends,
    found in the container's config.json (kubelet's path, which the container cannot move); never
    through a link, never more than kubelet reads."""
    try:
        mounts = spec_file.read(bundle).get("mounts") or []
    except (OSError, ValueError):
        return
    sources = [m.get("source") for m in mounts if isinstance(m, dict) and m.get("destination") == TERMINATION_LOG]
    if not sources or not isinstance(sources[-1], str):
        return   # not under kubelet (or another terminationMessagePath): the pod's log says it
    try:
        fd = os.open(sources[-1], os.O_WRONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:
        return
    try:
        if stat.S_ISREG(os.fstat(fd).st_mode):
            os.ftruncate(fd, 0)
            os.write(fd, message.encode()[:TERMINATION_MESSAGE_MAX])
    except OSError:
        pass   # the message is a courtesy: the exit code decides the Job
    finally:
        os.close(fd)


def _write_pod_log(pid: int, line: str) -> None:
    """One line on the worker's stderr where that is the pipe its runtime copies into the pod's log.
    The watcher is detached from the container's stdio, so it opens the pipe again through /proc;
    anything else there (a terminal, a file the worker opened) is left alone."""
    path = f"/proc/{pid}/fd/2"
    try:
        before = os.stat(path)
        if not stat.S_ISFIFO(before.st_mode):
            return
        fd = os.open(path, os.O_WRONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:
        return
    try:
        after = os.fstat(fd)
        if (after.st_dev, after.st_ino) == (before.st_dev, before.st_ino):   # the same pipe, not a swapped fd
            os.write(fd, line.encode() + b"\n")
    except OSError:
        pass   # a full or closed pipe: the termination message still says it
    finally:
        os.close(fd)


if __name__ == "__main__":
    sys.exit(run(settings_file.load(), Job(**json.loads(sys.argv[1]))))
