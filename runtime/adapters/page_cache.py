"""A snapshot's files and the kernel's page cache: read them in ahead of a restore with parallel
readers (a restore then fills memory at memory speed instead of the disk's), and measure how much
of them is resident (mincore over a mapping of each file, a window at a time)."""
from __future__ import annotations

import ctypes
import ctypes.util
import mmap
import os
import stat
import threading
from typing import Callable, Iterable

CHUNK = 16 << 20            # one read of a reader; large enough that each is one sequential I/O
ADVISE_CHUNK = 64 << 20     # one read-ahead request of the prefetch
WINDOW = 1 << 30            # mincore looks at this much of a file at a time
PAGE = os.sysconf("SC_PAGE_SIZE")

_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
_libc.mmap.restype = ctypes.c_void_p
_libc.mmap.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_long)
_libc.munmap.argtypes = (ctypes.c_void_p, ctypes.c_size_t)
_libc.mincore.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_char_p)
MAP_FAILED = ctypes.c_void_p(-1).value


def _open_regular(path: str) -> int | None:
    """An fd of the path if it is a regular file now (a FIFO put in a file's place must not block)."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY)
    if stat.S_ISREG(os.fstat(fd).st_mode):
        return fd
    os.close(fd)
    return None


def _read_range(item: tuple[str, int]) -> int:
    path, offset = item
    fd = _open_regular(path)
    if fd is None:
        return 0
    try:
        return len(os.pread(fd, CHUNK, offset))
    finally:
        os.close(fd)


def _ranges(paths: Iterable[str], chunk: int) -> list[tuple[str, int]]:
    return [(p, off) for p in paths for off in range(0, os.path.getsize(p), chunk)]


def warm(paths: Iterable[str], threads: int, on_read: Callable[[int], None] | None = None) -> int:
    """Read every byte of these files with `threads` parallel readers; returns the bytes read.
    `on_read` hears of each range read (its bytes), from the readers' threads."""
    from concurrent.futures import ThreadPoolExecutor   # only where readers run (not on every restore)

    def read(item: tuple[str, int]) -> int:
        n = _read_range(item)
        if on_read:
            on_read(n)
        return n
    with ThreadPoolExecutor(max(1, threads)) as pool:
        return sum(pool.map(read, _ranges(paths, CHUNK)))


def _advise_range(item: tuple[str, int]) -> None:
    fd = _open_regular(item[0])
    if fd is None:
        return
    try:
        os.posix_fadvise(fd, item[1], ADVISE_CHUNK, os.POSIX_FADV_WILLNEED)
    finally:
        os.close(fd)


def prefetch_in_background(paths: Iterable[str], threads: int) -> None:
    """Ask the kernel to read these files ahead, `threads` ranges at once, without waiting: for a
    reader that will read them one after another (ranges already cached cost nothing)."""
    ranges = _ranges(paths, ADVISE_CHUNK)

    def run() -> None:
        from concurrent.futures import ThreadPoolExecutor
        with ThreadPoolExecutor(max(1, threads)) as pool:
            list(pool.map(_advise_range, ranges))
    if ranges:
        threading.Thread(target=run, daemon=True, name="rewarm-prefetch").start()


def resident_bytes(path: str) -> int:
    """Bytes of the file that are in the page cache now."""
    fd = _open_regular(path)
    if fd is None:
        return 0
    size = os.fstat(fd).st_size
    if size == 0:
        os.close(fd)
        return 0
    try:
        resident = 0
        for offset in range(0, size, WINDOW):
            length = min(WINDOW, size - offset)
            addr = _libc.mmap(None, length, mmap.PROT_READ, mmap.MAP_SHARED, fd, offset)
            if addr in (None, MAP_FAILED):
                raise OSError(ctypes.get_errno(), f"mmap {path}: {os.strerror(ctypes.get_errno())}")
            try:
                vec = ctypes.create_string_buffer((length + PAGE - 1) // PAGE)
                if _libc.mincore(addr, length, vec) != 0:
                    raise OSError(ctypes.get_errno(), f"mincore {path}: {os.strerror(ctypes.get_errno())}")
                resident += (len(vec.raw) - vec.raw.count(0)) * PAGE
            finally:
                _libc.munmap(addr, length)
        return min(resident, size)
    finally:
        os.close(fd)
