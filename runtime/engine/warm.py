"""Warm snapshots: an entry's files read into the page cache ahead of the restores that will need
them (`rewarm warm`, and `warm_after` after a capture, import or pull), and how much of an entry
is resident (`rewarm doctor`). The files its worker reads back after a restore (reload_files.py)
are warmed with it: a restore is only as warm as everything it reads. A file that is not there as
the capture saw it (gone, another size, a link now) is left out, and the result says why."""
from __future__ import annotations

import os
import time
from dataclasses import dataclass

from runtime.observe import logs
from runtime.snapshot import page_cache
from runtime.observe.progress import Progress
from runtime.snapshot.store import Entry
from runtime.model.events import EventKind
from runtime.model.settings import Settings


@dataclass(frozen=True)
class Warmed:
    bytes_read: int
    seconds: float
    resident_before: int
    resident_after: int
    left_out: tuple[str, ...] = ()    # "PATH: why" for each file not read


def wanted(entry: Entry) -> dict[str, int]:
    """Each file to read in, with the size it must have: the entry's own (under the store's real
    path, so that a link inside it is never followed), then the files its worker reads back as the
    capture found them (only a regular file of that size, reached without a link, is read)."""
    top = os.path.realpath(entry.path)
    files = {os.path.join(top, rel): digest.size for rel, digest in entry.manifest.files.items()}
    for f in entry.manifest.reload_files:
        files.setdefault(f.host, f.size)
    return files


def size(entry: Entry) -> int:
    """The bytes a warm of the entry reads as its files are now."""
    return sum(n for path, n in wanted(entry).items() if page_cache.why_left_out(path, n) is None)


def resident(entry: Entry) -> int:
    return sum(page_cache.resident_bytes(path, n) for path, n in wanted(entry).items())


def warm(entry: Entry, threads: int, progress: Progress | None = None) -> Warmed:
    before = resident(entry)
    t = time.monotonic()
    files = wanted(entry)
    left_out: list[str] = []
    read = page_cache.warm(list(files), threads, progress.add if progress else None,
                           lambda path, why: left_out.append(f"{path}: {why}"), files)
    if progress:
        progress.finish()
    return Warmed(read, time.monotonic() - t, before, resident(entry), tuple(left_out))


def after(settings: Settings, event: str, entry: Entry) -> None:
    """Warm a new entry if the config asks for it after this event (capture, import, pull)."""
    if event in settings.warm_after:
        done = warm(entry, settings.restore_threads)
        left_out = {"left_out": list(done.left_out[:20])} if done.left_out else {}
        logs.event(settings.event_log, EventKind.WARMED, namespace=entry.namespace, snapshot=entry.name,
                   entry=entry.ident, after=event, bytes=done.bytes_read, seconds=round(done.seconds, 3), **left_out)
