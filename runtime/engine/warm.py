"""Warm snapshots: an entry's files read into the page cache ahead of the restores that will need
them (`rewarm warm`, and `warm_after` after a capture, import or pull), and how much of an entry
is resident (`rewarm doctor`). The files its worker reads back after a restore (reload_files.py)
are warmed with it: a restore is only as warm as everything it reads."""
from __future__ import annotations

import os
import time
from dataclasses import dataclass

from runtime.adapters import logs, page_cache, reload_files
from runtime.adapters.progress import Progress
from runtime.adapters.store import Entry
from runtime.model.events import EventKind
from runtime.model.settings import Settings


@dataclass(frozen=True)
class Warmed:
    bytes_read: int
    seconds: float
    resident_before: int
    resident_after: int


def files_of(entry: Entry) -> list[str]:
    """The entry's own files, then the worker's files to read back that are on this node."""
    return [entry.file(rel) for rel in entry.manifest.files] + reload_files.on_this_node(entry.manifest.reload_files)


def size(entry: Entry) -> int:
    return sum(os.path.getsize(path) for path in files_of(entry))


def resident(entry: Entry) -> int:
    return sum(page_cache.resident_bytes(path) for path in files_of(entry))


def warm(entry: Entry, threads: int, progress: Progress | None = None) -> Warmed:
    before = resident(entry)
    t = time.monotonic()
    read = page_cache.warm(files_of(entry), threads, progress.add if progress else None)
    if progress:
        progress.finish()
    return Warmed(read, time.monotonic() - t, before, resident(entry))


def after(settings: Settings, event: str, entry: Entry) -> None:
    """Warm a new entry if the config asks for it after this event (capture, import, pull)."""
    if event in settings.warm_after:
        done = warm(entry, settings.restore_threads)
        logs.event(settings.event_log, EventKind.WARMED, namespace=entry.namespace, snapshot=entry.name,
                   entry=entry.ident, after=event, bytes=done.bytes_read, seconds=round(done.seconds, 3))
