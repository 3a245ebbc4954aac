"""Helpers of the system tests: the operator's command, the event log, copies of store entries."""
from __future__ import annotations

import contextlib
import ctypes
import json
import os
import shutil
import subprocess
import sys
import time
from typing import Any, Callable, Iterator

from runtime.container import cgroups
from runtime.observe import logs
from runtime.snapshot import store
from runtime.host.files import read_json, write_json
from runtime.front.names import CONFIG_ENV
from runtime.model import layout
from runtime.lab.runc_lab import Container
from runtime.model.settings import Settings


def evict(path: str) -> None:
    """Push a file out of the page cache (written back first: dirty pages stay)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def wait_for(predicate: Callable[[], Any], timeout: float = 60.0, what: str = "condition") -> Any:
    """predicate()'s first true value, asked every 50 ms for at most `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not (found := predicate()):
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)
    return found


def captured_source(node: Settings, directory: str, snapshot: str, env: dict[str, str] | None = None,
                    leave_running: bool = False, ready_s: float = 60) -> Iterator[dict[str, Any]]:
    """A module fixture's body: a worker started by rewarm-runc in a lab of its own under
    `directory`, ready, then captured as `snapshot`; yields {"entry", "answer", "source"}. Without
    `leave_running` its source is gone (restores may reuse its pids)."""
    from runtime.engine import capture
    from runtime.lab.runc_lab import Lab
    os.chmod(directory, 0o755)
    lab = Lab(directory)
    try:
        source = lab.create(f"{snapshot}-source", lab.worker({"rewarm.dev/snapshot": snapshot}, env=env or {}))
        answer, _ = source.wait_ready(timeout=ready_s)
        entry = capture.capture(node, lab.runc_root, source.cid, snapshot, leave_running=leave_running)
        yield {"entry": entry, "answer": answer, "source": source}
    finally:
        lab.close()


@contextlib.contextmanager
def config_named(path: str) -> Iterator[None]:
    """$REWARM_CONFIG names `path` inside the block (rewarm-runc and the CLI read it), then what it named."""
    old = os.environ.get(CONFIG_ENV)
    os.environ[CONFIG_ENV] = path
    try:
        yield
    finally:
        if old is None:
            os.environ.pop(CONFIG_ENV, None)
        else:
            os.environ[CONFIG_ENV] = old


def gpu_usable() -> bool:
    """An NVIDIA GPU and a driver with the CUDA checkpoint API (GPU tests skip without them)."""
    try:
        ctypes.CDLL("libcuda.so.1").cuCheckpointProcessLock  # noqa: B018
        return os.path.exists("/dev/nvidiactl")
    except (OSError, AttributeError):
        return False


def rewarm_cli(*args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    """The `rewarm` command of this venv, as an operator runs it."""
    return subprocess.run([os.path.join(os.path.dirname(sys.executable), "rewarm"), *args],
                          capture_output=True, text=True, timeout=timeout)


def events(node: Settings, kind: str | None = None) -> list[dict[str, Any]]:
    return [r for r in logs.read_events(node.event_log) if kind is None or r["event"] == kind]


def clone_entry(node: Settings, entry: store.Entry, new_name: str) -> str:
    """Copy a committed entry under another snapshot name (as if captured under that name)."""
    dest_parent = store.Store(node.store).name_dir(entry.namespace, new_name)
    os.makedirs(dest_parent, mode=0o700, exist_ok=True)
    dest = os.path.join(dest_parent, entry.ident)
    shutil.copytree(entry.path, dest)
    meta = read_json(os.path.join(dest, layout.MANIFEST))
    meta["name"] = new_name
    write_json(os.path.join(dest, layout.MANIFEST), meta)
    for leftover in (store.VERIFIED_FILE, store.LAST_USED):
        if os.path.exists(os.path.join(dest, leftover)):
            os.unlink(os.path.join(dest, leftover))
    return dest


def reseal(entry_path: str) -> None:
    """Recompute the manifest's checksums: a foreign snapshot whose checksums agree with its content."""
    meta = read_json(os.path.join(entry_path, layout.MANIFEST))
    sums = store.checksum_tree(entry_path)
    meta["files"] = {k: {"size": v.size, "sha256": v.sha256} for k, v in sums.items()}
    write_json(os.path.join(entry_path, layout.MANIFEST), meta)


def spec_of(c: Container) -> dict:
    return read_json(os.path.join(c.bundle.path, "config.json"))


def stray_processes(c: Container) -> list[int]:
    """Processes in the container's cgroups that are not the container runc knows."""
    known = set(json.loads(c.runtime_cmd("ps", "--format", "json", c.cid).stdout or "[]"))
    in_cgroup = set()
    for d in cgroups.container_dirs(spec_of(c)):
        with open(os.path.join(d, "cgroup.procs")) as f:
            in_cgroup |= {int(p) for p in f.read().split()}
    return sorted(in_cgroup - known)


def survivors(c: Container, wait: float = 5.0) -> list[str]:
    """Processes left of a container after its delete: any process whose cgroup, in any hierarchy,
    names the container, and any `criu` process in a PID namespace not ours (a half-restored init
    that no cgroup holds yet). Zombies do not count; they get a moment to be reaped."""
    ours = os.readlink("/proc/self/ns/pid")
    deadline = time.monotonic() + wait
    while True:
        found = []
        for pid in filter(str.isdigit, os.listdir("/proc")):
            with contextlib.suppress(OSError, IndexError):
                with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as f:
                    head, _, tail = f.read().rpartition(")")
                if tail.split()[0] == "Z":
                    continue
                with open(f"/proc/{pid}/cgroup") as f:
                    in_cgroup = c.cid in f.read()
                foreign = os.readlink(f"/proc/{pid}/ns/pid") != ours and head.split("(", 1)[1] == "criu"
                if in_cgroup or foreign:
                    found.append(f"{pid} {head.split('(', 1)[1]}" + (" (other PID namespace)" if foreign else ""))
        if not found or time.monotonic() > deadline:
            return found
        time.sleep(0.1)


# A launcher for measuring a command's own peak memory: the kernel's ru_maxrss of a child counts the
# pages it shared with its parent before exec, so a command forked straight from the test process
# would be charged the test process's size. This small process forks it instead.
_LAUNCH = ("import os, sys\n"
           "pid = os.fork()\n"
           "if pid == 0:\n"
           "    os.execv(sys.argv[2], sys.argv[2:])\n"
           "_, status, usage = os.wait4(pid, 0)\n"
           "os.write(int(sys.argv[1]), str(usage.ru_maxrss).encode())\n"
           "os._exit(os.waitstatus_to_exitcode(status))\n")


def run_measured(argv: list[str], env: dict[str, str] | None = None, stdin: bytes | None = None,
                 timeout: float = 180) -> tuple[subprocess.CompletedProcess[str], int, float]:
    """Run argv; its outcome, its peak resident memory in bytes and its wall-clock seconds."""
    read_end, write_end = os.pipe()
    started = time.monotonic()
    try:
        proc = subprocess.Popen([sys.executable, "-S", "-c", _LAUNCH, str(write_end), *argv], pass_fds=(write_end,),
                                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
        os.close(write_end)
        try:
            out, err = proc.communicate(stdin, timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, err = proc.communicate()
        peak = int(os.read(read_end, 64) or b"0") * 1024
    finally:
        os.close(read_end)
    done = subprocess.CompletedProcess(argv, proc.returncode, out.decode(errors="replace"), err.decode(errors="replace"))
    return done, peak, time.monotonic() - started
