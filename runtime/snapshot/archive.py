"""Checkpoint archives in the layout of CRI-O and Podman (`podman container checkpoint --export`):
unpacked member by member as untrusted input, and packed from a store entry.

Members must be plain files or directories with relative names that stay inside the destination;
links, devices and fifos are refused, and a member never overwrites another.
"""
from __future__ import annotations

import os
import shutil
import tarfile
from typing import IO, Iterable

from runtime.host.files import atomic_write
from runtime.model.errors import ArchiveError

MAX_MEMBERS = 100_000
ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"   # Podman compresses its exports with zstd by default


def _safe_name(name: str) -> str:
    norm = os.path.normpath(name)
    if name.startswith("/") or norm == ".." or norm.startswith("../") or "\0" in name:
        raise ArchiveError(f"archive member {name!r} would land outside the snapshot")
    return norm


def open_archive(archive: str) -> tarfile.TarFile:
    """A tar archive, plain, gzip, bzip2, xz or zstd, read as a stream."""
    try:
        with open(archive, "rb") as f:
            magic = f.read(4)
        if magic == ZSTD_MAGIC:
            import zstandard
            stream: IO[bytes] = zstandard.ZstdDecompressor().stream_reader(open(archive, "rb"), closefd=True)
            return tarfile.open(fileobj=stream, mode="r|")
        return tarfile.open(archive, "r|*")
    except (OSError, tarfile.TarError) as e:
        raise ArchiveError(f"{archive}: not a readable tar archive ({e})") from e


def unpack(archive: str, dest: str, skip: Iterable[str] = (), max_bytes: int | None = None) -> None:
    """Plain files and directories only, each created new; names in `skip` are left out. More
    than `max_bytes` of content (a decompression bomb, or no room) stops it with a clear reason."""
    skipped = {".", *skip}
    written = 0
    try:
        with open_archive(archive) as tar:
            for i, member in enumerate(tar):
                if i >= MAX_MEMBERS:
                    raise ArchiveError(f"{archive}: more than {MAX_MEMBERS} members")
                name = _safe_name(member.name)
                if name in skipped:
                    continue
                target = os.path.join(dest, name)
                if member.isdir():
                    os.makedirs(target, mode=0o700, exist_ok=True)
                elif member.isfile():
                    os.makedirs(os.path.dirname(target), mode=0o700, exist_ok=True)
                    source = tar.extractfile(member)
                    assert source is not None  # a regular file always has content
                    written += member.size
                    if max_bytes is not None and written > max_bytes:
                        raise ArchiveError(f"{archive}: unpacks to more than {max_bytes / 2**30:.2f} GiB "
                                           "(the limit of import_max_ratio, or the store's free space)")
                    with source, open(target, "xb") as out:  # "x": no second copy
                        shutil.copyfileobj(source, out, 8 << 20)
                    os.chmod(target, 0o600)
                else:
                    raise ArchiveError(f"archive member {member.name!r} is not a plain file or directory")
    except FileExistsError as e:
        raise ArchiveError(f"{archive}: a member appears twice ({e.filename})") from e
    except (tarfile.TarError, OSError, EOFError) as e:
        raise ArchiveError(f"{archive}: broken archive ({e})") from e


def _plain(info: tarfile.TarInfo) -> tarfile.TarInfo:
    info.uid = info.gid = 0
    info.uname = info.gname = "root"
    return info


def pack(directory: str, archive: str, skip: Iterable[str] = ()) -> None:
    """Write `directory`'s members as a tar archive (gzip for .gz / .tgz), appearing with one rename."""
    skipped = set(skip)
    tmp = os.path.join(os.path.dirname(os.path.abspath(archive)), f".rewarm-export-{os.getpid()}")
    try:
        with tarfile.open(tmp, "w:gz" if archive.endswith((".gz", ".tgz")) else "w") as tar:
            for item in sorted(os.listdir(directory)):
                if item not in skipped:
                    tar.add(os.path.join(directory, item), arcname=item, filter=_plain)
        os.chmod(tmp, 0o600)
        os.replace(tmp, archive)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def write_empty_diff(tar_path: str, deleted_path: str) -> None:
    """The rootfs diff of a checkpoint that changed nothing: an empty tar and an empty list."""
    if not os.path.exists(deleted_path):
        atomic_write(deleted_path, "[]")
    if not os.path.exists(tar_path) or os.path.getsize(tar_path) == 0:
        with tarfile.open(tar_path, "w"):
            pass
