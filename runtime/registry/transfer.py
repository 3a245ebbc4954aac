"""Parallel blob transfers between the store and a registry.

oras-py pushes and pulls one blob after another; a snapshot is mostly a few large page images, so
rewarm runs oras's blob calls on a pool of threads, reading and writing pieces of files in place
(pread / pwrite at the piece's offset). A download is hashed as it arrives and must match its
digest; a resumed download first re-hashes what an earlier attempt left and fetches only the
pieces that do not match (a piece cut short by a kill never matches).
"""
from __future__ import annotations

import hashlib
import os
import threading
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from dataclasses import replace
from typing import Callable, Sequence, TypeVar

from runtime.registry import ocicrypt
from runtime.registry.client import Client
from runtime.registry.native import Piece
from runtime.observe.progress import Progress
from runtime.model.errors import RegistryError, TransferInterrupted

T = TypeVar("T")
R = TypeVar("R")


def run_all(threads: int, func: Callable[[T], R], items: list[T], stop: threading.Event | None = None) -> list[R]:
    """func over items on a pool; the first failure cancels what has not started, sets `stop` for
    what runs, and is raised."""
    with ThreadPoolExecutor(max(1, threads)) as pool:
        futures = [pool.submit(func, item) for item in items]
        done, pending = wait(futures, return_when=FIRST_EXCEPTION)
        if stop is not None:
            stop.set()
        for f in pending:
            f.cancel()
        for f in futures:
            if f.done() and not f.cancelled() and f.exception() is not None:
                raise f.exception()  # type: ignore[misc]
        return [f.result() for f in futures]


def _read(root: str, p: Piece) -> bytes:
    fd = os.open(os.path.join(root, p.path), os.O_RDONLY)
    try:
        data = os.pread(fd, p.size, p.offset)
    finally:
        os.close(fd)
    if len(data) != p.size:
        raise RegistryError(f"{p.path} is shorter than its manifest says")
    return data


def upload(client: Client, root: str, pieces: list[Piece], progress: Progress,
           recipients: Sequence[ocicrypt.Key] = ()) -> list[Piece]:
    """Upload the pieces of the files under root that the registry lacks; returns them with digests.
    With recipients, every piece is encrypted to them (ocicrypt.py) and always sent: its fresh key
    makes it a blob no registry has."""
    def one(p: Piece) -> Piece:
        data = b""
        if not p.digest:
            data = _read(root, p)
            p = replace(p, digest="sha256:" + hashlib.sha256(data).hexdigest())
        if recipients:
            ciphertext, sealed = ocicrypt.seal(data or _read(root, p), p.digest, recipients)
            client.put_blob(sealed.blob, ciphertext)
            progress.add(p.size)
            return replace(p, sealed=sealed)
        if client.has_blob(p.digest):
            progress.add(p.size, skipped=True)
            return p
        client.put_blob(p.digest, data or _read(root, p))
        progress.add(p.size)
        return p
    return run_all(client.threads, one, pieces)


def put_config(client: Client, data: bytes) -> str:
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    if not client.has_blob(digest):
        client.put_blob(digest, data)
    return digest


def fetch_bytes(client: Client, digest: str, size: int, limit: int = 16 << 20) -> bytes:
    """A small blob (a config, a signature's payload) in memory, checked against its digest: a
    descriptor that says more than `limit` is refused, and no more than it says is read."""
    if size > limit:
        raise RegistryError(f"blob {digest[:19]} is {size} bytes, more than a config may be")
    data = client.blob_bytes(digest, size)
    if len(data) != size or "sha256:" + hashlib.sha256(data).hexdigest() != digest:
        raise RegistryError(f"blob {digest[:19]} does not match its digest: corrupt in the registry or in transit")
    return data


class Files:
    """The open files of a download (one descriptor per file, shared by the threads)."""

    def __init__(self, root: str, sizes: dict[str, int]):
        self.fds: dict[str, int] = {}
        try:
            for path, size in sizes.items():
                target = os.path.join(root, path)
                os.makedirs(os.path.dirname(target), mode=0o700, exist_ok=True)
                fd = os.open(target, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o600)
                self.fds[path] = fd
                if os.fstat(fd).st_size != size:
                    os.ftruncate(fd, size)
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        for fd in self.fds.values():
            os.close(fd)
        self.fds.clear()


def _matches(files: Files, p: Piece) -> bool:
    h, offset, left = hashlib.sha256(), p.offset, p.size
    while left:
        data = os.pread(files.fds[p.path], min(left, 4 << 20), offset)
        if not data:
            return False
        h.update(data)
        offset, left = offset + len(data), left - len(data)
    return "sha256:" + h.hexdigest() == p.digest


STALL_BYTES = 1 << 20


def _watch(client: Client, progress: Progress, stop: threading.Event, stall_s: float, why: list[str]) -> None:
    """Break the transfer off when less than STALL_BYTES moved in `stall_s`: a registry that
    trickles a byte now and then keeps every read inside its timeout, and the pull's lock held."""
    last = progress.moved + progress.skipped
    while not stop.wait(stall_s):
        now = progress.moved + progress.skipped
        if now - last < STALL_BYTES:
            why.append(f"the registry sent {now - last} bytes in {stall_s:g}s (pull_stall_s): stalled, "
                       "broken off (the part already here is kept for the next pull)")
            stop.set()
            client.abort()
            return
        last = now


def download(client: Client, root: str, pieces: list[Piece], progress: Progress, resume: bool,
             stall_s: float) -> None:
    """Write every piece into its file under root, each checked against its digest, none longer
    than its manifest says; a transfer that stalls for `stall_s` fails (TransferInterrupted)."""
    sizes: dict[str, int] = {}
    for p in pieces:
        sizes[p.path] = max(sizes.get(p.path, 0), p.offset + p.size)
    files, stop = Files(root, sizes), threading.Event()
    stalled: list[str] = []
    watchdog = threading.Thread(target=_watch, args=(client, progress, stop, stall_s, stalled), daemon=True)
    try:
        def one(p: Piece) -> None:
            if resume and _matches(files, p):
                progress.add(p.size, skipped=True)
                return
            h, offset, fd = hashlib.sha256(), p.offset, files.fds[p.path]
            opener, blob_hash = (p.sealed.opener(), hashlib.sha256()) if p.sealed else (None, h)
            for data in client.blob_stream(p.blob):
                if stop.is_set():
                    raise RegistryError("stopped: another blob failed")
                if offset + len(data) > p.offset + p.size:
                    raise RegistryError(f"blob {p.blob[:19]} of {p.path} is longer than its {p.size} bytes")
                if opener:
                    blob_hash.update(data)
                    data = opener.update(data)
                h.update(data)
                os.pwrite(fd, data, offset)
                offset += len(data)
                progress.add(len(data))
            if opener and offset == p.offset + p.size and "sha256:" + blob_hash.hexdigest() == p.blob:
                opener.check()   # the ciphertext is the registry's; its HMAC says it is what was sealed
            if offset != p.offset + p.size or "sha256:" + h.hexdigest() != p.digest:
                raise RegistryError(f"blob {p.digest[:19]} of {p.path} does not match its digest "
                                    f"({offset - p.offset} of {p.size} bytes): corrupt in the registry or in transit")
        watchdog.start()
        # largest first: the long transfers start at once and the small ones fill the gaps
        run_all(client.threads, one, sorted(pieces, key=lambda p: -p.size), stop)
    except Exception as e:
        if stalled:
            raise TransferInterrupted(stalled[0]) from e
        raise
    finally:
        stop.set()
        watchdog.join()
        files.close()
