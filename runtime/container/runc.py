"""The one wrapper of the real runtime's command line (runc, or crun which takes the same verbs)."""
from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass
from typing import Any, Callable

from runtime.container import mounts
from runtime.host import procfs
from runtime.host.files import start_time

# Global flags of the caller that a restore must repeat so that it lands where the caller looks.
FORWARDED_GLOBALS = ("--root", "--log", "--log-format", "--systemd-cgroup", "--debug", "--rootless")


STATE_FILE = "state.json"   # runc's record of a container, in ROOT/ID/
EXEC_FIFO = "exec.fifo"     # in ROOT/ID/ from `create` until `start`


@dataclass(frozen=True)
class Status:
    """What `runc state` says of a container: created, running, stopped (or paused, where the
    runtime was asked), and the pid of its init."""
    status: str
    pid: int


@dataclass(frozen=True)
class Runc:
    binary: str
    root: str

    def run(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        return subprocess.run([self.binary, "--root", self.root, *args], stdin=subprocess.DEVNULL,
                              capture_output=True, text=True, timeout=timeout)

    def state(self, container_id: str) -> dict[str, Any] | None:
        """`runc state` as a dict, or None when the runtime does not know the container."""
        proc = self.run("state", container_id, timeout=30)
        if proc.returncode != 0:
            return None
        try:
            state = json.loads(proc.stdout)
        except ValueError:
            return None
        return state if isinstance(state, dict) else None

    def status(self, container_id: str) -> Status | None:
        """The container's status and init pid, read from runc's state file as `runc state` derives
        them, without starting a process (a watcher asks this every fraction of a second for as
        long as a pod takes to be ready). Only where that file is not there (another runtime, or
        runc between making the container's directory and writing it) is the runtime asked. A
        paused container reads as running here (runc tells it by its cgroup's freezer).
        None: the runtime does not know the container."""
        directory = os.path.join(self.root, container_id)
        try:
            with open(os.path.join(directory, STATE_FILE), "rb") as f:
                raw = json.load(f)
            pid, start = int(raw["init_process_pid"]), int(raw["init_process_start"])
        except FileNotFoundError:
            return self._status_by_asking(container_id) if os.path.isdir(directory) else None
        except (OSError, ValueError, KeyError, TypeError):
            return self._status_by_asking(container_id)
        if start_time(pid) != start:   # runc's own test: that pid is no longer its init
            return Status("stopped", pid)
        return Status("created" if os.path.exists(os.path.join(directory, EXEC_FIFO)) else "running", pid)

    def _status_by_asking(self, container_id: str) -> Status | None:
        state = self.state(container_id)
        return Status(str(state.get("status")), int(state.get("pid") or 0)) if state else None

    def pids(self, container_id: str) -> list[int]:
        proc = self.run("ps", "--format", "json", container_id, timeout=30)
        try:
            return [int(p) for p in json.loads(proc.stdout or "[]")]
        except (ValueError, TypeError):
            return []

    def delete_force(self, container_id: str) -> None:
        """`runc delete --force`, and what it cannot do after a runc killed midway: a restore's runc
        mounts the rootfs at STATE/criu-root for CRIU, and runc's delete removes the state dir
        recursively, through that mount, into the container's rootfs. So unmount first; and a state
        dir without state.json, which runc refuses for ever after, is removed here."""
        state_dir = os.path.join(self.root, container_id)
        mounts.unmount_under(state_dir)
        self.run("delete", "--force", container_id)
        if os.path.exists(state_dir) and not os.path.exists(os.path.join(state_dir, "state.json")) \
                and not mounts.under(state_dir):
            shutil.rmtree(state_dir, ignore_errors=True)

    def exists(self, container_id: str) -> bool:
        """runc's state directory of the container is there (even half-made, without state.json)."""
        return os.path.exists(os.path.join(self.root, container_id))

    def resume(self, container_id: str) -> None:
        self.run("resume", container_id)

    def checkpoint_argv(self, container_id: str, *, criu: str, images: str, work: str, leave_running: bool,
                        tcp_established: bool) -> list[str]:
        argv = [self.binary, "--root", self.root, "--criu", criu, "checkpoint", "--image-path", images,
                "--work-path", work, "--file-locks", "--ext-unix-sk"]
        if tcp_established:
            argv.append("--tcp-established")
        if leave_running:
            argv.append("--leave-running")
        return argv + [container_id]


@dataclass(frozen=True, kw_only=True)
class RestoreFrom:
    """What a `runc restore` reads (the bundle, CRIU's images and work dir) and how it runs."""
    criu: str
    bundle: str
    images: str
    work: str
    detach: bool = False
    pid_file: str | None = None
    no_pivot: bool = False


def restore_argv(binary: str, caller_globals: dict[str, str | bool], container_id: str, how: RestoreFrom) -> list[str]:
    """`runc restore` for a container the caller asked to `create` (or `run`): the caller's global
    flags (root, log, log format, cgroup driver) come along, so the result is where it looks."""
    argv = [binary]
    for flag in FORWARDED_GLOBALS:
        value = caller_globals.get(flag)
        if value is True:
            argv.append(flag)
        elif value:
            argv += [flag, str(value)]
    argv += ["--criu", how.criu, "restore", "--bundle", how.bundle, "--image-path", how.images, "--work-path", how.work,
             "--file-locks", "--ext-unix-sk"]
    if how.detach:
        argv.append("--detach")
    if how.pid_file:
        argv += ["--pid-file", how.pid_file]
    if how.no_pivot:
        argv.append("--no-pivot")
    return argv + [container_id]


def run_bounded(argv: list[str], env: dict[str, str], timeout: float, capture: bool = False,
                on_lost_criu: Callable[[], object] | None = None) -> tuple[int | None, str]:
    """Run the runtime (a restore or checkpoint) in a process group of its own; on timeout kill the
    whole group, runc and the CRIU it started, and return None as the exit code. Without `capture`
    its stdio is ours (for a restore: the container's); with it, stderr is returned.
    `on_lost_criu` is called once if runc's CRIU dies while runc still waits (within POLL_S), after
    the restore's half-made tasks, which hold CRIU's end of runc's socket, were killed: it kills
    what else the restore left (the container's cgroups)."""
    proc = subprocess.Popen(argv, env=env, start_new_session=True, stdin=subprocess.DEVNULL if capture else None,
                            stdout=subprocess.DEVNULL if capture else None,
                            stderr=subprocess.PIPE if capture else None, text=True)
    deadline, err, code, watch = time.monotonic() + timeout, "", None, _CriuWatch(proc.pid)
    while True:
        try:
            _, err = proc.communicate(timeout=POLL_S)
            code = proc.returncode
            break
        except subprocess.TimeoutExpired:
            if time.monotonic() > deadline:
                break
            if on_lost_criu is not None and (orphans := watch.half_made()):
                _kill(orphans)
                on_lost_criu()
                on_lost_criu = None
    if code != 0:
        # A runc that failed or was killed may leave its CRIU working. CRIU notices the lost runc and
        # undoes what it did (parasite code out of the dumped tasks, cgroups unfrozen, the network lock
        # lifted), so it gets a moment to do that; only what still runs then is killed.
        if code is None:   # timed out: half-made tasks are children of runc, outside its group
            _kill([pid for pid, alive in _criu_children_of(proc.pid) if alive])
        else:
            _wait_group_gone(proc.pid, GROUP_DRAIN_S)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        _wait_group_gone(proc.pid, KILLED_WAIT_S)   # none of it may mount anything after the caller cleans up
        if code is None:
            _, err = proc.communicate()
    return code, err or ""


POLL_S = 0.1


class _CriuWatch:
    """CRIU's death in the middle of a restore. runc talks to its child `criu swrk` (which renames
    itself `criu: restore --rpc`) and reaps it only once the restore's answer came. CRIU forks the
    restored tree's init with CLONE_PARENT, so while the restore runs that is a child of runc named
    `criu` too, and it holds CRIU's end of runc's socket: with CRIU killed, runc would wait for
    ever. So a `criu` child of runc that has died (a zombie runc has not reaped) beside living ones
    means CRIU was killed midway, and the living ones are what it left half made (a finished
    restore leaves none: its tasks have their own names by then). Two polls in a row must agree."""

    def __init__(self, runc_pid: int) -> None:
        self.runc_pid, self.suspects = runc_pid, set[int]()

    def half_made(self) -> list[int]:
        children = _criu_children_of(self.runc_pid)
        now = {pid for pid, alive in children if alive} if any(not alive for _, alive in children) else set()
        found, self.suspects = sorted(now & self.suspects), now
        return found


def _criu_children_of(ppid: int) -> list[tuple[int, bool]]:
    """(pid, not a zombie) of runc's children named criu."""
    return [(p.pid, p.alive) for p in procfs.every() if p.ppid == ppid and p.name == "criu"]


def _kill(pids: list[int]) -> None:
    """SIGKILL each (a half-made init is PID 1 of its namespace: its whole tree goes with it)."""
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


GROUP_DRAIN_S = 15.0
KILLED_WAIT_S = 5.0


def _wait_group_gone(pgid: int, seconds: float) -> None:
    until = time.monotonic() + seconds
    while _group_alive(pgid) and time.monotonic() < until:
        time.sleep(0.05)


def _group_alive(pgid: int) -> bool:
    return any(p.pgid == pgid and p.alive for p in procfs.every())


def start_attached(argv: list[str], env: dict[str, str], pid_file: str,
                   timeout: float) -> tuple[subprocess.Popen[bytes] | None, int | None]:
    """Start a restore that stays attached (`runc run` in the foreground): runc writes the pid file
    once the process is restored, then waits for it to exit. Returns (the running runc, None) once
    the pid file is there, or (None, exit code) if runc ended first (None on timeout, after killing
    its process group)."""
    proc = subprocess.Popen(argv, env=env, start_new_session=True)
    deadline = time.monotonic() + timeout
    while proc.poll() is None:
        if os.path.exists(pid_file):
            return proc, None
        if time.monotonic() > deadline:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            return None, None
        time.sleep(0.01)
    return None, proc.returncode


FORWARDED_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGQUIT, signal.SIGUSR1, signal.SIGUSR2,
                     signal.SIGWINCH)


def wait_forwarding(proc: subprocess.Popen[bytes]) -> int:
    """Wait for an attached runc, passing on the signals we get (runc passes them to the container),
    and return its exit code, which is the container's."""
    for sig in FORWARDED_SIGNALS:
        signal.signal(sig, lambda signum, _frame: proc.send_signal(signum))
    return proc.wait()


def errors_since(log_path: str | None, offset: int) -> str:
    """The runtime's own error messages written to its --log (JSON or text lines) after `offset`:
    the last few."""
    if not log_path:
        return ""
    try:
        with open(log_path, encoding="utf-8", errors="replace") as f:
            f.seek(offset)
            lines = f.read().splitlines()
    except OSError:
        return ""
    messages = []
    for line in lines:
        try:
            record = json.loads(line)
            if isinstance(record, dict) and record.get("level") == "error":
                messages.append(str(record.get("msg", "")))
        except ValueError:
            if "level=error" in line:
                messages.append(line.split("msg=", 1)[-1])
    return " | ".join(m[:300] for m in messages[-3:])
