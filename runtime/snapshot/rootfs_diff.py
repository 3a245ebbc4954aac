"""The files a container changed in its root filesystem: captured from the overlay upper dir,
laid back into a new container's rootfs before restore.

A snapshot may come from another node or an archive, so its tar is untrusted: every member is
checked before anything is written, every write goes through `secure_join` (symlinks already in
the rootfs are resolved as the container would see them, never on the host), and whatever was
laid is undone if the restore fails, so a cold start finds the rootfs as it was.
"""
from __future__ import annotations

import contextlib
import json
import os
import shutil
import stat
import tarfile
from dataclasses import dataclass, field

from runtime.container import mounts
from runtime.model.errors import UnsafeRootfsDiff

MAX_SYMLINKS = 40


# --- capture ---------------------------------------------------------------------------------
def overlay_upper(rootfs: str) -> str | None:
    """The upperdir of the overlay mounted at `rootfs`, or None if it is not an overlay."""
    target = os.path.realpath(rootfs)
    upper = None
    for m in mounts.table():
        if m.point != target:
            continue
        upper = None  # the last mount on a path is the visible one
        if m.fstype == "overlay":
            for opt in m.options.split(","):
                if opt.startswith("upperdir="):
                    upper = opt[len("upperdir="):]
    return upper


def _is_whiteout(st: os.stat_result) -> bool:
    return stat.S_ISCHR(st.st_mode) and st.st_rdev == 0


def _is_opaque(path: str) -> bool:
    for name in ("trusted.overlay.opaque", "user.overlay.opaque"):
        try:
            if os.getxattr(path, name, follow_symlinks=False) == b"y":
                return True
        except OSError:
            pass
    return False


def upper_bytes(rootfs: str) -> int:
    """Bytes of the files a container wrote into its rootfs (0 where it is not an overlay)."""
    upper = overlay_upper(rootfs)
    total = 0
    for dirpath, _, filenames in os.walk(upper) if upper else ():
        for name in filenames:
            with contextlib.suppress(OSError):
                total += os.lstat(os.path.join(dirpath, name)).st_size
    return total


def write(upper: str | None, tar_path: str, deleted_path: str) -> tuple[int, int]:
    """Tar the upper dir's changes (None: an empty diff); whiteouts and opaque dirs become
    deleted.files entries. Returns (tar bytes, deleted count)."""
    deleted: list[str] = []
    with tarfile.open(tar_path, "w", format=tarfile.PAX_FORMAT) as tar:
        for dirpath, dirnames, filenames in os.walk(upper) if upper else ():
            dirnames.sort()
            for name in sorted(dirnames) + sorted(filenames):
                path = os.path.join(dirpath, name)
                rel = os.path.relpath(path, upper)
                st = os.lstat(path)
                if _is_whiteout(st):
                    deleted.append(rel)
                elif stat.S_ISDIR(st.st_mode) or stat.S_ISREG(st.st_mode) or stat.S_ISLNK(st.st_mode):
                    if stat.S_ISDIR(st.st_mode) and _is_opaque(path):
                        deleted.append(rel)  # the lower dir's content is gone: delete, then lay this one
                    tar.add(path, arcname=rel, recursive=False)
    with open(deleted_path, "w", encoding="utf-8") as f:
        json.dump(deleted, f)
    return os.path.getsize(tar_path), len(deleted)


# --- checks ----------------------------------------------------------------------------------
def _check_rel(name: str, what: str) -> str:
    norm = name.rstrip("/")
    if norm.startswith("/") or not norm or "\0" in norm:
        raise UnsafeRootfsDiff(f"rootfs diff: {what} {name!r} is not a relative path")
    parts = norm.split("/")
    if ".." in parts:
        raise UnsafeRootfsDiff(f"rootfs diff: {what} {name!r} climbs out with '..'")
    if all(p in ("", ".") for p in parts):
        raise UnsafeRootfsDiff(f"rootfs diff: {what} {name!r} names the root filesystem itself")
    return "/".join(p for p in parts if p not in ("", "."))


def check_members(members: list[tarfile.TarInfo]) -> None:
    """Refuse the whole diff if any member could write outside the rootfs or is not a plain file,
    dir, symlink or hard link to another member."""
    symlinks: set[str] = set()
    names: set[str] = set()
    for m in members:
        name = _check_rel(m.name, "member")
        parts = name.split("/")
        for i in range(1, len(parts)):
            if "/".join(parts[:i]) in symlinks:
                raise UnsafeRootfsDiff(f"rootfs diff: member {m.name!r} is written through symlink "
                                    f"{'/'.join(parts[:i])!r} of the same archive")
        if m.issym():
            symlinks.add(name)
        elif m.islnk():
            if _check_rel(m.linkname, "hard link target") not in names:
                raise UnsafeRootfsDiff(f"rootfs diff: hard link {m.name!r} points outside the archive")
        elif not (m.isreg() or m.isdir()):
            raise UnsafeRootfsDiff(f"rootfs diff: member {m.name!r} has an unsupported type")
        names.add(name)


def secure_join(root: str, rel: str) -> str:
    """root/rel with the parent components resolved inside root, as the container sees them."""
    resolved: list[str] = []
    todo = [p for p in rel.split("/") if p not in ("", ".")]
    final = todo.pop() if todo else ""
    hops = 0
    while todo:
        part = todo.pop(0)
        if part == "..":
            if resolved:
                resolved.pop()
            continue
        host = os.path.join(root, *resolved, part)
        if os.path.islink(host):
            hops += 1
            if hops > MAX_SYMLINKS:
                raise UnsafeRootfsDiff(f"rootfs diff: too many symlinks resolving {rel!r}")
            target = os.readlink(host)
            if target.startswith("/"):
                resolved = []
            todo = [p for p in target.split("/") if p not in ("", ".")] + todo
        else:
            resolved.append(part)
    return os.path.join(root, *resolved, final)


# --- apply with undo -------------------------------------------------------------------------
MADE, SET_ASIDE, MODE = "made", "set aside", "mode"


@dataclass
class Patch:
    """What `apply` changed in a rootfs, one step at a time, so that `undo` can take the steps back
    strictly in reverse: each one then meets the very state it left (a path set aside, laid again,
    replaced by a link and so on). Undo never acts through a link: the restored container may have
    run before a restore failed, and a step whose parent directory is no longer the real one it was
    (a link now, or outside the rootfs) is left as it is."""
    backup_dir: str
    steps: list[tuple[str, str, int | str]] = field(default_factory=list)   # (MADE|SET_ASIDE|MODE, path, what)

    def made(self, path: str) -> None:
        """Record before making `path` (a partly written one is taken away too)."""
        self.steps.append((MADE, path, ""))

    def chmod_dir(self, path: str, mode: int) -> None:
        self.steps.append((MODE, path, os.lstat(path).st_mode & 0o7777))
        os.chmod(path, mode)

    def set_aside(self, path: str) -> None:
        backup = os.path.join(self.backup_dir, str(len(self.steps)))
        shutil.move(path, backup)
        self.steps.append((SET_ASIDE, path, backup))

    def undo(self) -> None:
        for kind, path, what in reversed(self.steps):
            with contextlib.suppress(OSError):
                if not _parent_is_real(path):
                    continue
                if kind == MADE and os.path.lexists(path):
                    _remove(path)
                elif kind == SET_ASIDE and not os.path.lexists(path):
                    shutil.move(str(what), path)
                elif kind == MODE and _is_real_dir(path):
                    os.chmod(path, int(what))
        shutil.rmtree(self.backup_dir, ignore_errors=True)


def _parent_is_real(path: str) -> bool:
    """The directory holding `path` is reached without a link (apply's paths are fully resolved)."""
    parent = os.path.dirname(path)
    return os.path.realpath(parent) == parent


def _is_real_dir(path: str) -> bool:
    return stat.S_ISDIR(os.lstat(path).st_mode)


def _remove(path: str) -> None:
    if _is_real_dir(path):
        shutil.rmtree(path)   # which never follows a link below it
    else:
        os.unlink(path)


def read_deleted(path: str) -> list[str]:
    try:
        with open(path, encoding="utf-8") as f:
            deleted = json.load(f)
    except FileNotFoundError:
        return []
    except ValueError as e:
        raise UnsafeRootfsDiff(f"deleted.files is not a JSON list: {e}") from e
    if not isinstance(deleted, list) or not all(isinstance(p, str) for p in deleted):
        raise UnsafeRootfsDiff("deleted.files is not a JSON list of paths")
    return [_check_rel(p, "deleted path") for p in deleted]


def _open_checked(tar_path: str, deleted_path: str) -> tuple[list[str], tarfile.TarFile, list[tarfile.TarInfo]]:
    deleted = read_deleted(deleted_path)
    try:
        tar = tarfile.open(tar_path, "r:")
        members = tar.getmembers()
    except (tarfile.TarError, OSError, EOFError) as e:
        raise UnsafeRootfsDiff(f"rootfs diff {os.path.basename(tar_path)} is unreadable: {e}") from e
    try:
        check_members(members)
    except UnsafeRootfsDiff:
        tar.close()
        raise
    return deleted, tar, members


def check(tar_path: str, deleted_path: str) -> None:
    """Refuse a diff that apply() would refuse, without touching any rootfs (for imports and pulls)."""
    _open_checked(tar_path, deleted_path)[1].close()


def apply(rootfs: str, tar_path: str, deleted_path: str, backup_dir: str) -> Patch:
    """Lay deletions then the diff into rootfs. On any error, what was laid is undone first."""
    deleted, tar, members = _open_checked(tar_path, deleted_path)
    rootfs = os.path.realpath(rootfs)   # every path laid is then free of links, which undo checks
    os.makedirs(backup_dir, mode=0o700, exist_ok=True)
    patch = Patch(backup_dir)
    try:
        with tar:
            for rel in deleted:
                path = secure_join(rootfs, rel)
                if os.path.lexists(path):
                    patch.set_aside(path)
            paths = _Paths(rootfs)
            for m in members:
                _lay(tar, m, paths, patch)
    except BaseException as e:
        patch.undo()
        if isinstance(e, (OSError, tarfile.TarError, EOFError)):
            raise UnsafeRootfsDiff(f"rootfs diff could not be laid: {e}") from e
        raise
    return patch


class _Paths:
    """secure_join for the members of one diff, which remembers the real directories it laid: a
    deep tree (vLLM's torch.compile cache) would otherwise cost an lstat per component per file.
    A member's parent is taken from here only where the diff itself laid (or kept) it as a
    directory; anything else is resolved in full. A member that replaces what was there forgets
    all of it: a directory remembered under one name may have been reached through a link of the
    image under another (/lib -> usr/lib), so no name prefix tells what the replacement moved."""

    def __init__(self, rootfs: str):
        self.rootfs = rootfs
        self.dirs: dict[str, str] = {}   # member name -> host path, of directories laid so far

    def join(self, rel: str) -> tuple[str, bool]:
        """(host path, whether its parent is known to exist as a real directory)."""
        parent, _, final = rel.rpartition("/")
        known = self.dirs.get(parent) if parent else None
        return (os.path.join(known, final), True) if known else (secure_join(self.rootfs, rel), False)

    def laid(self, rel: str, path: str, is_dir: bool, replaced: bool) -> None:
        if replaced:
            self.dirs.clear()
        if is_dir:
            self.dirs[rel] = path


def _lay(tar: tarfile.TarFile, m: tarfile.TarInfo, paths: _Paths, patch: Patch) -> None:
    rel = _check_rel(m.name, "member")
    path, parent_known = paths.join(rel)
    if not parent_known:
        _make_parents(path, patch)
    exists = os.path.lexists(path)
    if m.isdir() and exists and os.path.isdir(path) and not os.path.islink(path):
        patch.chmod_dir(path, m.mode & 0o7777)
        paths.laid(rel, path, is_dir=True, replaced=False)
        return
    if exists:
        patch.set_aside(path)
    paths.laid(rel, path, is_dir=m.isdir(), replaced=exists)
    patch.made(path)
    if m.isdir():
        os.mkdir(path, m.mode & 0o7777)
    elif m.issym():
        os.symlink(m.linkname, path)
    elif m.islnk():
        os.link(secure_join(paths.rootfs, m.linkname), path, follow_symlinks=False)   # a link to a link stays one
        return
    else:
        src = tar.extractfile(m)
        assert src is not None
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
        with src, os.fdopen(fd, "wb") as dst:
            shutil.copyfileobj(src, dst, 1 << 20)
    if os.geteuid() == 0:   # the engine runs as root; an unprivileged caller keeps its own ownership
        os.lchown(path, m.uid, m.gid)
    if not m.issym():
        os.chmod(path, m.mode & 0o7777)  # after chown, which would clear set-id bits
        os.utime(path, (m.mtime, m.mtime))


def _make_parents(path: str, patch: Patch) -> None:
    """Directories a diff names no entry for (Podman's diffs leave out parents that are mount points
    of the container, such as /run), created 0755 and undone with the patch."""
    missing = []
    parent = os.path.dirname(path)
    while not os.path.lexists(parent):
        missing.append(parent)
        parent = os.path.dirname(parent)
    for directory in reversed(missing):
        patch.made(directory)
        os.mkdir(directory, 0o755)
