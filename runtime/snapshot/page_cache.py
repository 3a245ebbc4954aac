"""A snapshot's files and the kernel's page cache: read them in ahead of a restore with parallel
readers (a restore then fills memory at memory speed instead of the disk's), and measure how much
of them is resident (mincore over a mapping of each file, a window at a time).

Each file is opened once, reached without following a symbolic link, and only if it is a regular
file (open_regular): the files a worker reads back lie in directories its container can write, so
a link in them may be swapped in at any moment, pointing anywhere on the host."""
from __future__ import annotations

import ctypes
import mmap
import os
import stat
import threading
from collections import deque
from typing import TYPE_CHECKING, Callable, Iterable, Mapping, Sequence

if TYPE_CHECKING:   # imported where readers run, not on every restore
    from concurrent.futures import Future, ThreadPoolExecutor

CHUNK = 16 << 20            # one read of a reader; large enough that each is one sequential I/O
ADVISE_CHUNK = 64 << 20     # one read-ahead request of the prefetch
WINDOW = 1 << 30            # mincore looks at this much of a file at a time
PAGE = os.sysconf("SC_PAGE_SIZE")

_libc = ctypes.CDLL(None, use_errno=True)   # the C library already loaded (find_library would start ldconfig)
_libc.mmap.restype = ctypes.c_void_p
_libc.mmap.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_long)
_libc.munmap.argtypes = (ctypes.c_void_p, ctypes.c_size_t)
_libc.mincore.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_char_p)
MAP_FAILED = ctypes.c_void_p(-1).value


class NotReadable(Exception):
    """A path left out, and why: not reached without a symbolic link, or not a regular file (of
    the size it must have)."""


_DIR = os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_LEAF = os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC


def _reach(path: str) -> int:
    """An O_PATH descriptor of `path`, walked from / one name at a time without following a link:
    a link anywhere on it (one swapped in for the file or a directory above it a moment ago
    included) is refused, never followed out of the tree its caller meant. O_PATH opens nothing:
    a FIFO cannot block and no device's driver runs."""
    names = path.split("/")[1:]
    if not path.startswith("/") or "" in names or "." in names or ".." in names:
        raise NotReadable("not an absolute path without . or ..")
    at = os.open("/", _DIR)
    try:
        for name in names[:-1]:
            try:
                below = os.open(name, _DIR, dir_fd=at)
            except NotADirectoryError:
                link = stat.S_ISLNK(os.stat(name, dir_fd=at, follow_symlinks=False).st_mode)
                raise NotReadable(f"{name} on its path is " + ("a symbolic link (not followed)" if link
                                                               else "not a directory")) from None
            os.close(at)
            at = below
        return os.open(names[-1], _LEAF, dir_fd=at)
    except OSError as e:   # not there, or not for us to look at
        raise NotReadable(os.strerror(e.errno).lower() if e.errno else str(e)) from None
    finally:
        os.close(at)


def _check(fd: int, size: int | None) -> None:
    st = os.fstat(fd)
    if stat.S_ISLNK(st.st_mode):
        raise NotReadable("a symbolic link (not followed)")
    if not stat.S_ISREG(st.st_mode):
        raise NotReadable(f"not a regular file (mode {stat.filemode(st.st_mode)})")
    if size is not None and st.st_size != size:
        raise NotReadable(f"{st.st_size} bytes, not the {size} it had when captured")


def why_left_out(path: str, size: int | None = None) -> str | None:
    """Why open_regular would refuse `path` now (None: it would open it); opens nothing."""
    try:
        fd = _reach(path)
        try:
            _check(fd, size)
        finally:
            os.close(fd)
    except NotReadable as e:
        return str(e)
    return None


def open_regular(path: str, size: int | None = None) -> int:
    """A descriptor for reading `path` if it is a regular file (of `size` bytes, where given)
    reached without a symbolic link; raises NotReadable. The file is opened for reading only
    after the check, through /proc/self/fd: the very inode checked, whatever the path holds now."""
    fd = _reach(path)
    try:
        _check(fd, size)
        return os.open(f"/proc/self/fd/{fd}", os.O_RDONLY | os.O_NOCTTY | os.O_CLOEXEC)
    finally:
        os.close(fd)


OPEN_AT_ONCE = 64   # files a warm or prefetch holds open at a time (a model directory may name thousands)
Sink = Callable[[str, str], None]


def _by_range(paths: Iterable[str], chunk: int, pool: "ThreadPoolExecutor", work: Callable[[int, int], int],
              sizes: Mapping[str, int] | None = None, on_left_out: Sink | None = None) -> int:
    """`work(fd, offset)` for each `chunk` of each file, in the pool; each file is opened once
    (open_regular: those it refuses go to `on_left_out` with the reason) and all its ranges go
    through that one descriptor. Returns the sum of what `work` returned."""
    from concurrent.futures import wait
    held: deque[tuple[int, list[Future[int]]]] = deque()
    total = 0
    try:
        for path in paths:
            try:
                fd = open_regular(path, (sizes or {}).get(path))
            except NotReadable as e:
                if on_left_out:
                    on_left_out(path, str(e))
                continue
            held.append((fd, [pool.submit(work, fd, off) for off in range(0, os.fstat(fd).st_size, chunk)]))
            if len(held) > OPEN_AT_ONCE:
                total += _finish(*held.popleft())
        while held:
            total += _finish(*held.popleft())
    finally:
        for fd, futures in held:   # after a failure too: no read may run on a closed descriptor
            wait(futures)
            os.close(fd)
    return total


def _finish(fd: int, futures: list["Future[int]"]) -> int:
    from concurrent.futures import wait
    wait(futures)
    os.close(fd)
    return sum(f.result() for f in futures)


def warm(paths: Iterable[str], threads: int, on_read: Callable[[int], None] | None = None,
         on_left_out: Sink | None = None, sizes: Mapping[str, int] | None = None) -> int:
    """Read every byte of these files with `threads` parallel readers; returns the bytes read.
    `on_read` hears of each range read (its bytes), from the readers' threads; `on_left_out` of
    each path not read and why; `sizes`: the size a path must have to be read."""
    from concurrent.futures import ThreadPoolExecutor

    def read(fd: int, offset: int) -> int:
        n = len(os.pread(fd, CHUNK, offset))
        if on_read:
            on_read(n)
        return n
    with ThreadPoolExecutor(max(1, threads)) as pool:
        return _by_range(paths, CHUNK, pool, read, sizes, on_left_out)


def _advise(fd: int, offset: int) -> int:
    os.posix_fadvise(fd, offset, ADVISE_CHUNK, os.POSIX_FADV_WILLNEED)
    return 0


def prefetch_in_background(paths: Iterable[str], threads: int) -> None:
    """Ask the kernel to read these files ahead, `threads` ranges at once, without waiting: for a
    reader that will read them one after another (ranges already cached cost nothing)."""
    todo = list(paths)

    def run() -> None:
        from concurrent.futures import ThreadPoolExecutor
        with ThreadPoolExecutor(max(1, threads)) as pool:
            _by_range(todo, ADVISE_CHUNK, pool, _advise)
    if todo:
        threading.Thread(target=run, daemon=True, name="rewarm-prefetch").start()


def read_ahead_in_background(files: Sequence[tuple[str, int]], budget: int) -> threading.Event:
    """Read these files (path, size) into the page cache from now on, one after another, with one
    reader: for a worker that will read them soon (a restored worker reading its weights back), so
    that the disk works while CRIU and the CUDA restore leave it idle. Each file is read only if it
    still has that size and only up to it (a worker's files are its to grow); ranges already cached
    are skipped (a mincore per range, no copy); it stops after `budget` bytes or once the returned
    event is set. Real reads, not posix_fadvise: advice queues every range at once, and a flood of
    it starved the rootfs diff and CRIU of the disk. One reader kept the disk as busy as two."""
    stop = threading.Event()

    def run() -> None:
        buffer, left = bytearray(CHUNK), budget
        for path, size in files:
            try:
                fd = open_regular(path, size)
            except (NotReadable, OSError):
                continue
            try:
                for offset in range(0, size, CHUNK):
                    length = min(CHUNK, size - offset)
                    if stop.is_set() or length > left:
                        return
                    if _resident_pages(fd, offset, length).count(0):
                        left -= length
                        if os.preadv(fd, [memoryview(buffer)[:length]], offset) < length:
                            break   # cut short since it was opened
            except OSError:   # only a help: the worker reads the file itself and meets the error there
                continue
            finally:
                os.close(fd)
    if files and budget > 0:
        threading.Thread(target=run, daemon=True, name="rewarm-read-ahead").start()
    return stop


def memory_available() -> int:
    """What the kernel says it can give without swapping (MemAvailable): the page cache that a
    read-ahead may fill without pushing out what it has just read."""
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    return 0


def _resident_pages(fd: int, offset: int, length: int) -> bytes:
    """mincore's answer for a range of the file: one byte per page, 0 where it is not cached."""
    addr = _libc.mmap(None, length, mmap.PROT_READ, mmap.MAP_SHARED, fd, offset)
    if addr in (None, MAP_FAILED):
        raise OSError(ctypes.get_errno(), f"mmap: {os.strerror(ctypes.get_errno())}")
    try:
        vec = ctypes.create_string_buffer((length + PAGE - 1) // PAGE)
        if _libc.mincore(addr, length, vec) != 0:
            raise OSError(ctypes.get_errno(), f"mincore: {os.strerror(ctypes.get_errno())}")
        return vec.raw
    finally:
        _libc.munmap(addr, length)


def resident_bytes(path: str, size: int | None = None) -> int:
    """Bytes of the file that are in the page cache now (0 for one open_regular refuses)."""
    try:
        fd = open_regular(path, size)
    except NotReadable:
        return 0
    try:
        file_size = os.fstat(fd).st_size
        resident = sum(PAGE * (len(vec) - vec.count(0)) for vec in (
            _resident_pages(fd, offset, min(WINDOW, file_size - offset)) for offset in range(0, file_size, WINDOW)))
        return min(resident, file_size)
    finally:
        os.close(fd)
