"""The one way rewarm writes a file: atomically (a reader sees the old file or the new one, never a
part), and the one way it reads JSON."""
from __future__ import annotations

import contextlib
import json
import os
import tempfile
from typing import Any


def read_json(path: str) -> Any:
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def atomic_write(path: str, data: str | bytes, mode: int = 0o600, sync: bool = True) -> None:
    """Write data to a temp file beside path, then rename it over path."""
    directory = os.path.dirname(path) or "."
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=directory)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data.encode() if isinstance(data, str) else data)
            if sync:
                f.flush()
                os.fsync(f.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def write_json(path: str, value: Any, mode: int = 0o600) -> None:
    atomic_write(path, json.dumps(value, indent=2, sort_keys=True) + "\n", mode)


def write_if_changed(path: str, text: str, mode: int = 0o600) -> bool:
    """Replace path atomically with text unless it holds exactly that already; True if written."""
    try:
        if not os.path.islink(path):
            with open(path, encoding="utf-8") as f:
                if f.read() == text and os.stat(path).st_mode & 0o7777 == mode:
                    return False
    except FileNotFoundError:
        pass
    atomic_write(path, text, mode, sync=False)
    return True


def remove_tree(path: str, prune_up_to: str | None = None) -> None:
    """Remove a directory tree, then its parents as long as they are empty, up to `prune_up_to`.
    It never crosses into a mount below `path`: under a killed CRIU's cgroup yard lie the node's
    cgroup hierarchies (mounts.unmount_under takes such mounts away first)."""
    _remove_on_own_mounts(path)
    parent = os.path.dirname(path.rstrip("/"))
    while prune_up_to and parent.startswith(prune_up_to.rstrip("/") + "/"):
        try:
            os.rmdir(parent)
        except OSError:
            return
        parent = os.path.dirname(parent)


def _remove_on_own_mounts(path: str) -> None:
    try:
        if not os.path.isdir(path) or os.path.islink(path):
            os.unlink(path)
            return
    except FileNotFoundError:
        return
    walked: list[tuple[str, list[str]]] = []
    for top, dirs, names in os.walk(path):
        links = [d for d in dirs if os.path.islink(os.path.join(top, d))]
        dirs[:] = [d for d in dirs if d not in links and not os.path.ismount(os.path.join(top, d))]
        walked.append((top, names + links))
    for top, names in reversed(walked):
        for name in names:
            with contextlib.suppress(OSError):
                os.unlink(os.path.join(top, name))
        with contextlib.suppress(OSError):
            os.rmdir(top)


def fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_tree(root: str) -> None:
    for dirpath, _, filenames in os.walk(root):
        for name in filenames:
            fd = os.open(os.path.join(dirpath, name), os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        fsync_dir(dirpath)


OWNER_FILE = "owner.pid"   # in a directory a process works in: which one (gc and hooks leave it alone while it lives)


def owned_dir(path: str, exist_ok: bool = False) -> str:
    """Make `path` (0700) as this process's working directory, its pid in OWNER_FILE."""
    os.makedirs(path, mode=0o700, exist_ok=exist_ok)
    with open(os.path.join(path, OWNER_FILE), "w") as f:
        f.write(str(os.getpid()))
    return path


def owner_alive(path: str) -> bool:
    """Whether the process that owns the directory `path` still runs."""
    try:
        with open(os.path.join(path, OWNER_FILE)) as f:
            os.kill(int(f.read().strip()), 0)
        return True
    except (OSError, ValueError):
        return False
