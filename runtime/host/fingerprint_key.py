"""The node's fingerprint key (`fingerprint_key_file`): read, or made once from 32 random bytes.
Nodes that share snapshots (push / pull, a shared store) must share the file: a Kubernetes Secret."""
from __future__ import annotations

import contextlib
import os
import stat

from runtime.model.errors import SettingsError

KEY_BYTES = 32
MIN_BYTES = 16


def load(path: str) -> bytes:
    try:
        with open(path, "rb") as f:
            st, key = os.fstat(f.fileno()), f.read()
    except FileNotFoundError:
        return _make(path)
    except OSError as e:
        raise SettingsError(f"fingerprint key {path}: {e.strerror}") from e
    if stat.S_IMODE(st.st_mode) & 0o077:
        raise SettingsError(f"fingerprint key {path} is mode {oct(stat.S_IMODE(st.st_mode))}: "
                            "it must be readable by its owner only (0600 or 0400)")
    if len(key) < MIN_BYTES:
        raise SettingsError(f"fingerprint key {path} holds {len(key)} bytes, fewer than {MIN_BYTES}")
    return key


def _make(path: str) -> bytes:
    """Written beside, then linked in: of two nodes' processes making it at once, the first wins
    and the other reads its key."""
    os.makedirs(os.path.dirname(path) or ".", mode=0o700, exist_ok=True)
    tmp = f"{path}.{os.getpid()}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.write(fd, os.urandom(KEY_BYTES))
        os.fsync(fd)
    finally:
        os.close(fd)
    try:
        with contextlib.suppress(FileExistsError):
            os.link(tmp, path)
    finally:
        os.unlink(tmp)
    return load(path)
