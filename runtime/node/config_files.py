"""Reading and writing the node's config files for `rewarm install` / `uninstall`, byte for byte.

A file is read and written as its exact bytes (UTF-8, CRLF kept: no newline translation). A
config that is a symlink keeps being one: rewarm writes the file the link points to, never the
link. The link is the node's own indirection (config management, an image's shared file, a
distribution's switch between configs); replacing it by a regular file would fork the config
from whatever keeps the target, and a later change there would silently no longer reach
containerd. Writing the target keeps every reader consistent, and uninstall gives the target its
bytes back, so link and target are both as they were. A target that cannot be written (a
read-only mount) is refused, naming it.

The node's own version of a file rewarm edits is kept beside the written file (the target) as
FILE.rewarm-backup, once, before the first change: what uninstall puts back when nobody edited the
file since. Every write is atomic (a temp file renamed over the target) with the old mode and owner.
"""
from __future__ import annotations

import difflib
import os
from dataclasses import dataclass, field

from runtime.host.files import atomic_write
from runtime.model.errors import InstallError

BACKUP_SUFFIX = ".rewarm-backup"


def target(path: str) -> str:
    """The file a write to `path` changes: the path itself, or where its links lead."""
    if not os.path.islink(path):
        return path
    real = os.path.realpath(path)
    if not os.path.exists(real):
        raise InstallError(f"{path} is a symlink to {real}, which does not exist: rewarm will not create a file "
                           "through a dangling link")
    return real


def read(path: str) -> str | None:
    """The file's text exactly (CRLF kept), or None where there is none."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except FileNotFoundError:
        return None
    except OSError as e:
        raise InstallError(f"cannot read {path}: {e.strerror}") from e
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise InstallError(f"{path} is not UTF-8 text ({e}): rewarm edits only text it can give back") from e


def backup_of(path: str) -> str:
    return target(path) + BACKUP_SUFFIX


@dataclass(frozen=True)
class Change:
    """One file to bring to `new` (None: removed). `keep_backup`: the node's own file, whose first
    version is kept for uninstall; `drop_backup`: the kept copy is no longer wanted (uninstall)."""
    path: str
    new: str | None
    keep_backup: bool = False
    drop_backup: bool = False


@dataclass(frozen=True)
class Done:
    """What happened to one file: its path (as named), whether it changed, the unified diff, and
    where a link led the write."""
    path: str
    changed: bool
    diff: str
    written: str = ""
    backup: str = ""


@dataclass
class Journal:
    """The bytes each file had before this run wrote it, to undo a run that containerd refuses."""
    before: list[tuple[str, str | None, int, int, int]] = field(default_factory=list)   # target, text, mode, uid, gid
    backups: list[str] = field(default_factory=list)

    def undo(self) -> None:
        for path, text, mode, uid, gid in reversed(self.before):
            if text is None:
                _remove(path)
            else:
                _write(path, text, (mode, uid, gid))
        for path in self.backups:
            _remove(path)


def _remove(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def _owner(path: str) -> tuple[int, int, int]:
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return 0o644, os.getuid(), os.getgid()
    return st.st_mode & 0o7777, st.st_uid, st.st_gid


def _write(path: str, text: str, owner: tuple[int, int, int]) -> None:
    mode, uid, gid = owner
    try:
        atomic_write(path, text, mode)
        if (uid, gid) != (os.getuid(), os.getgid()):
            os.chown(path, uid, gid)
    except OSError as e:
        raise InstallError(f"cannot write {path}: {e.strerror or e}") from e


def diff(path: str, old: str | None, new: str | None) -> str:
    return "".join(difflib.unified_diff((old or "").splitlines(True), (new or "").splitlines(True), path,
                                        path + " (rewarm)"))


def _drop(path: str, journal: Journal) -> None:
    kept = read(path)
    if kept is not None:
        journal.before.append((path, kept, *_owner(path)))
        _remove(path)


def apply(change: Change, dry_run: bool, journal: Journal) -> Done:
    """Bring one file to its new text (through a symlink: its target), noting in `journal` what it was."""
    real = target(change.path)
    old = read(real)
    backup = real + BACKUP_SUFFIX
    shown = diff(change.path, old, change.new)
    if dry_run or old == change.new:
        if change.drop_backup and not dry_run:
            _drop(backup, journal)
        return Done(change.path, old != change.new, shown)
    owner = _owner(real)
    journal.before.append((real, old, *owner))
    if change.new is None:
        _remove(real)
    else:
        if change.keep_backup and old is not None and not os.path.exists(backup):
            _write(backup, old, owner)
            journal.backups.append(backup)
        _write(real, change.new, owner)
    if change.drop_backup:
        _drop(backup, journal)
    return Done(change.path, True, shown, written=real if real != change.path else "",
                backup=backup if change.keep_backup and os.path.exists(backup) else "")
