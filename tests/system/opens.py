"""Which files a process under test opens: the kernel's inotify IN_OPEN events on watched files
(a read, a write or an exec of the file; an O_PATH descriptor, which reads nothing, is not an
open here on kernels since 6.5), and a FIFO that tells whether anything opened it for reading."""
from __future__ import annotations

import ctypes
import os
import select
import struct
import threading
import time

IN_OPEN = 0x20
IN_CLOSE = 0x08 | 0x10   # watched too: the kernel merges an event into an identical one still unread, so
                         # two opens in a row would count once; a close between them keeps them apart
_EVENT = struct.Struct("iIII")   # wd, mask, cookie, len (then len bytes of name)
_libc = ctypes.CDLL("libc.so.6", use_errno=True)


class Opens:
    """Counts the opens of the given files from now on (their inodes: a path renamed away keeps
    being watched where it went)."""

    def __init__(self, *paths: str) -> None:
        self.fd = _libc.inotify_init1(os.O_NONBLOCK | os.O_CLOEXEC)
        if self.fd < 0:
            raise OSError(ctypes.get_errno(), "inotify_init1")
        self._path_of: dict[int, str] = {}
        self.counts = {p: 0 for p in paths}
        for p in paths:
            wd = _libc.inotify_add_watch(self.fd, p.encode(), IN_OPEN | IN_CLOSE)
            if wd < 0:
                raise OSError(ctypes.get_errno(), f"inotify_add_watch {p}")
            self._path_of[wd] = p

    def update(self) -> dict[str, int]:
        while True:
            try:
                data = os.read(self.fd, 1 << 16)
            except BlockingIOError:
                return self.counts
            offset = 0
            while offset < len(data):
                wd, mask, _, length = _EVENT.unpack_from(data, offset)
                if mask & IN_OPEN and wd in self._path_of:
                    self.counts[self._path_of[wd]] += 1
                offset += _EVENT.size + length

    def wait_for(self, path: str, n: int, timeout: float) -> bool:
        """Until `path` was opened n times (True), or timeout."""
        deadline = time.monotonic() + timeout
        while self.update()[path] < n:
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            select.select([self.fd], [], [], left)
        return True

    def close(self) -> None:
        os.close(self.fd)


class FifoTrap:
    """A FIFO with a writer waiting in a blocking open: that open returns only once something
    opens the FIFO for reading, so `sprung` says whether anything did (on every kernel)."""

    def __init__(self, path: str) -> None:
        self.path = path
        os.mkfifo(path)
        self._writer = threading.Thread(target=self._wait_for_reader, daemon=True)
        self._writer.start()
        deadline = time.monotonic() + 10   # armed once the writer waits in the FIFO's open
        while not self._waiting():
            if time.monotonic() > deadline:
                raise RuntimeError(f"the writer of {path} never waited in its open")
            time.sleep(0.001)

    def _waiting(self) -> bool:
        try:
            with open(f"/proc/self/task/{self._writer.native_id}/wchan") as f:
                return f.read() == "wait_for_partner"
        except FileNotFoundError:
            return False

    def _wait_for_reader(self) -> None:
        os.close(os.open(self.path, os.O_WRONLY))

    @property
    def sprung(self) -> bool:
        return not self._writer.is_alive()

    def close(self) -> None:
        """Release the writer (open the FIFO for reading ourselves)."""
        fd = os.open(self.path, os.O_RDONLY | os.O_NONBLOCK)
        self._writer.join(10)
        os.close(fd)
