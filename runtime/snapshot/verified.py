"""The record of an entry's files that were checksummed already, so that a restore on the node that
captured (or last verified) them can skip reading gigabytes again.

Threat model. The store is root-only, so the record guards against what happens *beside* the
running engine, not against root on the node (which could change the engine itself):
- a file changed by a write: its ctime/mtime/size change;
- a file changed while its filesystem was not mounted (bit rot, an image edited offline, a disk
  moved to another machine): the mount's unique id (statx STATX_MNT_ID_UNIQUE, Linux >= 6.8; older
  kernels reuse mount ids, so there only a reboot is noticed) changes with every mount, the boot
  id with every boot;
- a manifest edited to match changed content, or the record edited to match a changed manifest:
  the record holds the sha256 the manifest expects for each file and is sealed with an HMAC under a
  key that exists only in /run (tmpfs, root-only, new on every boot).
Any mismatch, a missing key or an unreadable record means a full checksum pass, never a skip.
"""
from __future__ import annotations

import contextlib
import ctypes
import hashlib
import hmac
import json
import os
import stat
from typing import Any, Callable, Mapping

from runtime.host.files import atomic_write, read_json
from runtime.model import layout
from runtime.model.errors import SnapshotDamaged
from runtime.model.manifest import FileDigest

RECORD = ".verified"
SCHEMA_RECORD = ".schema-checked"   # sealed: these manifest bytes passed the schema this boot
KEY_PATH = os.path.join(layout.RUN_DIR, "verify.key")
Facts = dict[str, list[Any]]   # rel -> [mount id, inode, size, mtime_ns, ctime_ns, expected sha256]


def _boot_id() -> str:
    with open("/proc/sys/kernel/random/boot_id", encoding="ascii") as f:
        return f.read().strip()


def _key(create: bool) -> bytes | None:
    with contextlib.suppress(OSError):
        with open(KEY_PATH, "rb") as f:
            return f.read()
    if not create:
        return None
    with contextlib.suppress(OSError):
        os.makedirs(os.path.dirname(KEY_PATH), mode=0o700, exist_ok=True)
        atomic_write(KEY_PATH, os.urandom(32), mode=0o600, sync=False)
        with open(KEY_PATH, "rb") as f:
            return f.read()
    return None


_STATX_MNT_ID, _STATX_MNT_ID_UNIQUE, _AT_SYMLINK_NOFOLLOW = 0x1000, 0x4000, 0x100
_STX_MASK, _STX_MNT_ID = 0, 0x90     # offsets in struct statx
_libc = ctypes.CDLL(None, use_errno=True)


def mount_id(path: str) -> int:
    """The id of the mount that holds path: never reused where the kernel has unique ids (>= 6.8)."""
    buf = ctypes.create_string_buffer(256)
    if _libc.statx(-100, path.encode(), _AT_SYMLINK_NOFOLLOW, _STATX_MNT_ID_UNIQUE | _STATX_MNT_ID, buf) != 0:
        return -1
    mask = int.from_bytes(buf.raw[_STX_MASK:_STX_MASK + 4], "little")
    return int.from_bytes(buf.raw[_STX_MNT_ID:_STX_MNT_ID + 8], "little") if mask & 0x5000 else -1


def facts(entry_path: str, files: Mapping[str, FileDigest], ident: str) -> Facts:
    """What identifies each listed file now; refuses files that are not plain, root-owned files
    writable by root only (a symlink could point anywhere; another writer could change a verified
    file unseen)."""
    out: Facts = {}
    for rel, want in files.items():
        path = os.path.join(entry_path, rel)
        try:
            st = os.lstat(path)
            if not stat.S_ISREG(st.st_mode):
                raise SnapshotDamaged(f"snapshot {ident}: {rel} is not a plain file (a symlink or special file)")
            if st.st_uid != 0 or st.st_mode & 0o022:
                raise SnapshotDamaged(f"snapshot {ident}: {rel} is owned by uid {st.st_uid} with mode "
                                    f"{oct(st.st_mode & 0o7777)}: only root may write snapshot files")
            out[rel] = [mount_id(path), st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns, want.sha256]
        except FileNotFoundError as e:
            raise SnapshotDamaged(f"snapshot {ident} is missing {rel}") from e
    return out


def _seal(key: bytes, boot: str, current: Facts) -> str:
    return hmac.new(key, json.dumps([boot, current], sort_keys=True).encode(), hashlib.sha256).hexdigest()


def _sealed(path: str) -> tuple[dict[str, Any], str, bytes] | None:
    """A record of this boot at `path` with the key it must be sealed under, or None (no key, no
    record, another boot): then nothing is vouched for."""
    key = _key(create=False)
    if key is None:
        return None
    try:
        record = read_json(path)
        boot = _boot_id()
    except (OSError, ValueError):
        return None
    return (record, boot, key) if isinstance(record, dict) and record.get("boot") == boot else None


def _write_sealed(path: str, fields: dict[str, Any], seal: Callable[[bytes, str], str]) -> None:
    """Best effort: no record means the full pass runs again."""
    key = _key(create=True)
    if key is None:
        return
    with contextlib.suppress(OSError):
        boot = _boot_id()
        atomic_write(path, json.dumps({"boot": boot, **fields, "mac": seal(key, boot)}), sync=False)


def matches(entry_path: str, current: Facts) -> bool:
    """True only if a sealed record of this boot says exactly these files were checksummed."""
    found = _sealed(os.path.join(entry_path, RECORD))
    if found is None or found[0].get("files") != current:
        return False
    record, boot, key = found
    return hmac.compare_digest(str(record.get("mac", "")), _seal(key, boot, current))


def remember(entry_path: str, current: Facts) -> None:
    """Record that these files were just checksummed."""
    _write_sealed(os.path.join(entry_path, RECORD), {"files": current}, lambda key, boot: _seal(key, boot, current))


def _schema_seal(key: bytes, boot: str, manifest_bytes: bytes) -> str:
    return hmac.new(key, f"schema {boot} {hashlib.sha256(manifest_bytes).hexdigest()}".encode(),
                    hashlib.sha256).hexdigest()


def schema_checked(entry_path: str, manifest_bytes: bytes) -> bool:
    """Whether a sealed record of this boot says exactly these manifest bytes passed the schema (a
    restore then skips jsonschema: its import and pass cost ~80 ms on a 2-core node)."""
    found = _sealed(os.path.join(entry_path, SCHEMA_RECORD))
    if found is None:
        return False
    record, boot, key = found
    return hmac.compare_digest(str(record.get("mac", "")), _schema_seal(key, boot, manifest_bytes))


def remember_schema_check(entry_path: str, manifest_bytes: bytes) -> None:
    """Record that these manifest bytes just passed the schema."""
    _write_sealed(os.path.join(entry_path, SCHEMA_RECORD), {},
                  lambda key, boot: _schema_seal(key, boot, manifest_bytes))
