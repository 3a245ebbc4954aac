"""A container's cgroups, found from its spec, and the one thing rewarm does to them: after a failed
restore, kill whatever is left in them and remove them, so that the cold start begins in a clean
cgroup. (A CRIU killed midway leaves restored processes there that runc does not know about.)"""
from __future__ import annotations

import contextlib
import os
import signal
import time

from runtime.container import mounts
from runtime.model.oci_spec import Spec

FREEZE_WAIT_S = 5.0


def _mounts() -> list[tuple[str, str]]:
    """(mount point, root inside the hierarchy) of every cgroup and cgroup2 mount."""
    return [(m.point, m.root) for m in mounts.table() if m.fstype in ("cgroup", "cgroup2")]


def _systemd_path(cgroups_path: str) -> str:
    """runc's systemd form "SLICE:PREFIX:NAME" as a cgroupfs path."""
    slice_, prefix, name = cgroups_path.split(":", 2)
    parts, parents = [], slice_.removesuffix(".slice").split("-") if slice_ not in ("", "-.slice") else []
    for i in range(1, len(parents) + 1):
        parts.append("-".join(parents[:i]) + ".slice")
    return "/" + "/".join([*parts, f"{prefix}-{name}.scope" if prefix else f"{name}.scope"])


def container_dirs(spec: Spec) -> list[str]:
    """The container's cgroup directories that exist now, in every mounted hierarchy."""
    path = str((spec.get("linux") or {}).get("cgroupsPath") or "")
    if not path:
        return []
    if ":" in path and not path.startswith("/"):
        path = _systemd_path(path)
    if not path.startswith("/"):
        return []   # relative to the runtime's own cgroup: runc resolves it, rewarm does not guess
    found = []
    for point, root in _mounts():
        rel = os.path.relpath(path, root) if path.startswith(root.rstrip("/") + "/") or root == "/" else None
        if rel and not rel.startswith(".."):
            candidate = os.path.normpath(os.path.join(point, rel))
            if os.path.isdir(candidate):
                found.append(candidate)
    return found


def _pids(directory: str) -> list[int]:
    pids: list[int] = []
    for dirpath, _, _ in os.walk(directory):
        with contextlib.suppress(OSError), open(os.path.join(dirpath, "cgroup.procs")) as f:
            pids += [int(p) for p in f.read().split()]
    return pids


def _write(path: str, value: str) -> bool:
    try:
        with open(path, "w") as f:
            f.write(value)
        return True
    except OSError:
        return False


def kill_container(spec: Spec) -> list[int]:
    """kill_all of the container's cgroups as they exist at the time of the call."""
    return kill_all(container_dirs(spec))


def kill_all(dirs: list[str]) -> list[int]:
    """SIGKILL every process in these cgroups (frozen first, so none can fork away), wait until
    they are empty, and remove them. Returns the pids that were killed."""
    killed = sorted({p for d in dirs for p in _pids(d)})
    freezers = [d for d in dirs if os.path.exists(os.path.join(d, "freezer.state"))]
    for d in dirs:
        if os.path.exists(os.path.join(d, "cgroup.kill")):
            _write(os.path.join(d, "cgroup.kill"), "1")   # cgroup v2: the kernel kills the whole subtree
    for d in freezers:
        _write(os.path.join(d, "freezer.state"), "FROZEN")
    for pid in killed:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    for d in freezers:
        _write(os.path.join(d, "freezer.state"), "THAWED")   # killed tasks die once let run again
    deadline = time.monotonic() + FREEZE_WAIT_S
    while any(_pids(d) for d in dirs) and time.monotonic() < deadline:
        time.sleep(0.02)
    for d in dirs:
        for dirpath, _, _ in sorted(os.walk(d), key=lambda w: -len(w[0])):   # children first
            with contextlib.suppress(OSError):
                os.rmdir(dirpath)
    return killed
