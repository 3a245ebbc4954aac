"""The one way rewarm writes a file: atomically (a reader sees the old file or the new one, never a
part), the one way it reads JSON, and the one way a working directory names the process that owns
it, so that nothing removes it before that process has provably ended."""
from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import tempfile
import uuid
from dataclasses import dataclass
from typing import Any, Iterator

from runtime.host import procfs


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
RECLAIMING = ".reclaiming-"   # a directory gc has taken from its dead owner and is removing


@dataclass(frozen=True)
class Owner:
    """A process told apart from any later one that gets its pid: the pid, its start time (clock
    ticks after boot, /proc/PID/stat field 22), the boot and the PID namespace it was seen in."""
    pid: int
    start: int
    boot: str
    pid_ns: str

    def to_json(self) -> dict[str, Any]:
        return {"pid": self.pid, "start": self.start, "boot": self.boot, "pid_ns": self.pid_ns}


def start_time(pid: int) -> int | None:
    """When the process `pid` started (field 22 of /proc/PID/stat); None where there is no such
    process or it has ended (a zombie: it only waits for its parent to reap it)."""
    found = procfs.stat(pid)
    return found.start if found is not None and found.alive else None


def this_process() -> Owner:
    pid = os.getpid()
    with open("/proc/sys/kernel/random/boot_id", encoding="ascii") as f:
        boot = f.read().strip()
    return Owner(pid, start_time(pid) or 0, boot, os.readlink("/proc/self/ns/pid"))


def gone(owner: Owner) -> bool:
    """Whether the process is provably no longer running. One seen in another PID namespace cannot
    be looked up from here: it counts as running until the node reboots."""
    here = this_process()
    if owner.boot != here.boot:
        return True
    return owner.pid_ns == here.pid_ns and start_time(owner.pid) != owner.start


def owned_dir(path: str, exist_ok: bool = False) -> str:
    """Make `path` (0700) this process's working directory, named so in its OWNER_FILE; with
    `exist_ok`, take over one that is there (a pull resumes its part). Under the parent's shared
    claim lock, so that gc never sees the directory without its owner, nor takes it between its
    decision and its removal."""
    parent = os.path.dirname(path.rstrip("/"))
    os.makedirs(parent, exist_ok=True)
    with _claim_lock(parent, fcntl.LOCK_SH):
        os.makedirs(path, mode=0o700, exist_ok=exist_ok)
        atomic_write(os.path.join(path, OWNER_FILE), json.dumps(this_process().to_json()), sync=False)
    return path


def owner_alive(path: str) -> bool:
    """Whether the process that owns the directory `path` may still run: False only where it
    provably does not (no owner named, or it ended; its pid may serve another process by now)."""
    try:
        with open(os.path.join(path, OWNER_FILE), encoding="utf-8") as f:
            text = f.read().strip()
    except OSError:
        return False
    if text.isdigit():   # written by an earlier rewarm: only the pid
        try:
            os.kill(int(text), 0)
        except ProcessLookupError:
            return False
        except PermissionError:   # another user's process has that pid: one runs
            pass
        return True
    owner = _parsed(text)
    return owner is not None and not gone(owner)


def _parsed(text: str) -> Owner | None:
    """The owner a record names; None for one rewarm did not write (it names no process)."""
    try:
        raw = json.loads(text)
        owner = Owner(int(raw["pid"]), int(raw["start"]), str(raw["boot"]), str(raw["pid_ns"]))
    except (ValueError, TypeError, KeyError):
        return None
    return owner


def reclaim_abandoned(parent: str) -> list[str]:
    """Remove the directories under `parent` whose owner provably ended (or that name none);
    returns their paths. Each is judged and moved aside under the parent's exclusive claim lock
    (see owned_dir), and removed after it: a large one does not hold up new working directories."""
    taken: list[tuple[str, str]] = []
    with _claim_lock(parent, fcntl.LOCK_EX):
        for name in sorted(_dirs(parent)):
            path = os.path.join(parent, name)
            if name.startswith(RECLAIMING):   # left by a gc that ended while removing it
                taken.append((path, path))
            elif not owner_alive(path):
                aside = os.path.join(parent, f"{RECLAIMING}{uuid.uuid4().hex}")
                with contextlib.suppress(FileNotFoundError):   # gone already: nothing to take
                    os.rename(path, aside)
                    taken.append((path, aside))
    for _, aside in taken:
        shutil.rmtree(aside, ignore_errors=True)
    return [path for path, _ in taken]


@contextlib.contextmanager
def _claim_lock(parent: str, mode: int) -> Iterator[None]:
    """flock on the directory holding owned directories (none there: nothing to claim)."""
    try:
        fd = os.open(parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except FileNotFoundError:
        yield
        return
    try:
        fcntl.flock(fd, mode)
        yield
    finally:
        os.close(fd)


def _dirs(parent: str) -> list[str]:
    try:
        return [e.name for e in os.scandir(parent) if e.is_dir(follow_symlinks=False)]
    except FileNotFoundError:
        return []
