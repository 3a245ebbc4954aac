"""Where rewarm's messages go: the runtime log that containerd / CRI-O already read (runc's --log,
in runc's json or text format), rewarm's own event log (JSON lines), and optionally one line on the
container's stderr, which is the pod's log.

The event log is appended to by many rewarm processes at once (creates, hooks, captures, pulls) and
read by `rewarm events`, `rewarm agent` and the metrics. It is bounded: at `event_log_max_bytes` it
moves to EVENT_LOG.1 (replacing the one there) and a new log starts. Readers go by byte positions,
never by reading the log whole: the agent's follower and the metrics read what came after where
they stood (`lines_after`), through a rotation, a copytruncate and a torn line; a container's stop
reads backwards from the end until it finds its start (`last_event`).
"""
from __future__ import annotations

import fcntl
import functools
import json
import os
import sys
import time
from contextlib import closing, contextmanager
from dataclasses import dataclass
from typing import IO, Any, Generator, Iterable, Iterator, NamedTuple

from runtime.host import settings_file
from runtime.front.runc_argv import RuncCall
from runtime.model import clock
from runtime.model.errors import SettingsError
from runtime.model.events import EventKind
from runtime.model.settings import Settings


def _now() -> str:
    return clock.rfc3339_ns()


def runtime_log(call: RuncCall, level: str, msg: str) -> None:
    """Append one line to the runtime's --log file in the format the caller asked runc for."""
    path = call.globals.get("--log")
    if not isinstance(path, str) or not path:
        print(f"rewarm: {level}: {msg}", file=sys.stderr)
        return
    if call.globals.get("--log-format") == "json":
        line = json.dumps({"level": level, "msg": f"rewarm: {msg}", "time": _now()})
    else:
        line = f'time="{_now()}" level={level} msg={json.dumps("rewarm: " + msg)}'
    with open(path, "a", encoding="utf-8") as f:
        f.write(line + "\n")


# What every event this process writes is about (see `about`).
_subject: dict[str, str] = {}


def about(**fields: str) -> None:
    """Name the container and pod (container, namespace, pod, pod_uid) that every later event of
    this process is about. The processes that work for one container (its create, the pull on a miss that create
    forks, its on-ready watcher) write events deep in pull, push and capture, which do not know the
    pod; the node agent posts an event as a Kubernetes Event only where it names a pod. An event's
    own fields win over these."""
    _subject.clear()
    _subject.update(fields)


def event(event_log: str, kind: EventKind, **fields: Any) -> None:
    """One JSON line per lifecycle event."""
    record = {"time": _now(), "event": kind.value, **_subject, **fields}
    try:
        append(event_log, encode(record), _max_bytes(event_log))
    except OSError as e:  # an unwritable event log must never stop a container
        print(f"rewarm: cannot write event log {event_log}: {e}", file=sys.stderr)


def pod_notice(msg: str) -> None:
    """One line on stderr, which for `create` is the container's stderr: the pod's log."""
    try:
        sys.stderr.write(f"rewarm: {msg}\n")
        sys.stderr.flush()
    except OSError:
        pass


# The event log: writing and rotating

PREVIOUS = ".1"      # EVENT_LOG.1: the one previous log a rotation keeps
LOCK = ".lock"       # EVENT_LOG.lock: shared by writers while they append, exclusive for a rotation


def previous(event_log: str) -> str:
    return event_log + PREVIOUS


def _dumps(value: Any) -> str:
    # One spelling for the records and for the byte patterns that find them in the log (`last_event`).
    return json.dumps(value, sort_keys=True)


def encode(record: dict[str, Any]) -> bytes:
    """A record as its line of the log (json escapes every newline and non-ASCII character)."""
    return _dumps(record).encode() + b"\n"


@functools.lru_cache(maxsize=4)
def _max_bytes(event_log: str) -> int:
    """Where `event` rotates the log: the node config's event_log_max_bytes. Writers are handed
    only the log's path (Settings.event_log), so the bound comes from that same config, read once per
    process; a log that config does not name keeps the default bound."""
    try:
        settings = settings_file.load()
    except SettingsError:
        return Settings.event_log_max_bytes
    return settings.event_log_max_bytes if settings.event_log == event_log else Settings.event_log_max_bytes


@contextmanager
def _locked(event_log: str, how: int) -> Iterator[None]:
    fd = os.open(event_log + LOCK, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, how)
        yield
    finally:
        os.close(fd)   # and with it the lock


def append(event_log: str, line: bytes, max_bytes: int) -> None:
    """Append one line, then rotate the log if it has reached `max_bytes`.

    The line goes in with one write(2) on an O_APPEND descriptor, so lines of concurrent writers
    never interleave. Writers hold the lock shared while they append and a rotation holds it
    exclusive: once a reader sees the log renamed, nothing more arrives in the renamed file."""
    os.makedirs(os.path.dirname(event_log) or ".", mode=0o700, exist_ok=True)
    with _locked(event_log, fcntl.LOCK_SH):
        fd = os.open(event_log, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o666)
        try:
            os.write(fd, line)
            size = os.fstat(fd).st_size
        finally:
            os.close(fd)
    if size >= max_bytes:
        _rotate(event_log, max_bytes)


def _rotate(event_log: str, max_bytes: int) -> None:
    with _locked(event_log, fcntl.LOCK_EX):
        try:
            if os.stat(event_log).st_size < max_bytes:
                return   # a writer that crossed the bound at the same time rotated it already
        except FileNotFoundError:
            return
        os.replace(event_log, previous(event_log))


# The event log: reading

_LINE_MAX = 1 << 20   # no record is near this long: longer "lines" are garbage, cut into pieces of this size
_SALVAGE_MAX = 64 << 10   # lines up to this long are searched for a record after a torn one
_CHUNK = 1 << 20
_TAIL = 64            # bytes before a position that recognise its file after a truncation


def record_of(line: bytes) -> dict[str, Any] | None:
    """The record on one line of the log, or None (not a record).

    A writer that died mid-write (or hit a full disk) leaves a torn line that the next record then
    continues: the record after the torn part is found and kept."""
    found = _object(line)
    if found is not None or len(line) > _SALVAGE_MAX:
        return found
    start = line.find(b"{", 1)
    while found is None and start != -1:
        found = _object(line[start:])
        start = line.find(b"{", start + 1)
    return found


def _object(data: bytes) -> dict[str, Any] | None:
    try:
        value = json.loads(data)
    except ValueError:   # not JSON, or not UTF-8 (UnicodeDecodeError is a ValueError)
        return None
    return value if isinstance(value, dict) else None


def iter_events(event_log: str) -> Iterator[dict[str, Any]]:
    """Every record of the log, oldest first (its previous file, then itself), one at a time."""
    for path in (previous(event_log), event_log):
        try:
            f = open(path, "rb")
        except FileNotFoundError:
            continue
        with f:
            for line in f:
                record = record_of(line.rstrip(b"\n"))
                if record is not None:
                    yield record


def read_events(event_log: str) -> list[dict[str, Any]]:
    """Every record of the log (at most about twice event_log_max_bytes of it)."""
    return list(iter_events(event_log))


def last_event(event_log: str, container: str, kinds: Iterable[EventKind]) -> dict[str, Any] | None:
    """The latest record of one container among `kinds`, read backwards from the end of the log
    (then of its previous file): what a container's stop needs, without reading the log whole."""
    wanted = {k.value for k in kinds}
    needle = _dumps({"container": container})[1:-1].encode()   # "container": "ID", as encode spells it
    for path in (event_log, previous(event_log)):
        for line in _lines_backwards(path):
            if needle in line:
                record = record_of(line)
                if record is not None and record.get("container") == container and record.get("event") in wanted:
                    return record
    return None


def _lines_backwards(path: str) -> Iterator[bytes]:
    try:
        f = open(path, "rb")
    except FileNotFoundError:
        return
    with f:
        end = os.fstat(f.fileno()).st_size
        carry = b""   # the start of a line whose beginning is in a block not read yet
        while end > 0:
            start = max(0, end - _CHUNK)
            f.seek(start)
            lines = (f.read(end - start) + carry).split(b"\n")
            carry = lines.pop(0) if start > 0 else b""
            if len(carry) > _LINE_MAX:
                carry = b""   # garbage, not a record
            yield from (line for line in reversed(lines) if line)
            end = start


@dataclass(frozen=True)
class Position:
    """How far a reader has read the event log: `offset` bytes into the file with inode `ino`,
    whose last bytes before it were `tail` (a file truncated and written again does not have them
    there), at a time when the previous log's inode was `prev_ino`. Position() is before the
    first line of every file there will be."""
    ino: int = 0
    offset: int = 0
    tail: bytes = b""
    prev_ino: int = 0

    def to_json(self) -> dict[str, Any]:
        return {"ino": self.ino, "offset": self.offset, "tail": self.tail.hex(), "prev_ino": self.prev_ino}

    @classmethod
    def from_json(cls, raw: Any) -> "Position":
        """Raises ValueError for what to_json did not write."""
        try:
            at = cls(int(raw["ino"]), int(raw["offset"]), bytes.fromhex(raw["tail"]), int(raw["prev_ino"]))
        except (KeyError, TypeError) as e:
            raise ValueError(f"not a position: {e}") from e
        if at.offset < len(at.tail) or len(at.tail) > _TAIL:
            raise ValueError("not a position")
        return at


class _File(NamedTuple):
    f: IO[bytes]
    ino: int
    size: int


def _open(path: str) -> _File | None:
    try:
        f = open(path, "rb")
    except FileNotFoundError:
        return None
    st = os.fstat(f.fileno())
    return _File(f, st.st_ino, st.st_size)


def _tail_before(file: _File, offset: int) -> bytes:
    """The _TAIL bytes before `offset` (fewer near the start)."""
    start = max(0, offset - _TAIL)
    return os.pread(file.f.fileno(), offset - start, start) if start < offset else b""


def end_of(event_log: str) -> Position:
    """The position after everything the log holds now (after its previous file where the log
    itself is not there yet: it was just rotated)."""
    for path in (event_log, previous(event_log)):
        file = _open(path)
        if file is None:
            continue
        with file.f:
            prev_ino = _ino(previous(event_log)) if path == event_log else 0
            return Position(file.ino, file.size, _tail_before(file, file.size), prev_ino)
    return Position()


def _ino(path: str) -> int:
    try:
        return os.stat(path).st_ino
    except FileNotFoundError:
        return 0


def _continues(file: _File, at: Position) -> bool:
    """Does `file` hold the bytes that `at` stood after?"""
    if not at.tail:   # the start of a file: no bytes to go by, and any file would "continue" it
        return file.ino == at.ino
    return file.size >= at.offset and _tail_before(file, at.offset) == at.tail


def _plan(at: Position, current: _File | None, prev: _File | None) -> list[tuple[_File, int]]:
    """Which files hold what came after `at`, and from where: the one decision about rotation,
    copytruncate, truncation and removal that every reader of the log shares. An inode number says
    which file is which until the file is deleted (then a new file may get it): the bytes before
    the position say whether a file is still the one that was read."""
    if current and current.ino == at.ino and _continues(current, at):
        return [(current, at.offset)]           # the usual case: more lines, or none
    then = [(current, 0)] if current else []    # the log is another file now: all of it is new
    if prev and _continues(prev, at):
        return [(prev, at.offset), *then]       # rotated by rename, or copytruncate's copy: its rest first
    if prev and prev.ino not in (at.ino, at.prev_ino):
        return [(prev, 0), *then]               # a previous file started after at's (rotated twice since)
    return then                                 # truncated in place, or removed: the previous file is old


def lines_after(event_log: str, at: Position) -> Generator[tuple[bytes, Position], None, None]:
    """Every complete line written to the log after `at`, each with the position after it.

    A line still being written (no newline yet) at the end of the log is left for the next call;
    one at the end of a previous file (a torn write) is given as it is: no more will come there."""
    current, prev = _open(event_log), _open(previous(event_log))
    try:
        plan = _plan(at, current, prev)
        for i, (file, start) in enumerate(plan):
            prev_ino = prev.ino if prev and file is current else 0
            yield from _lines_of(file, Position(file.ino, start, _tail_before(file, start), prev_ino),
                                 finished=i < len(plan) - 1)
    finally:
        for opened in (current, prev):
            if opened:
                opened.f.close()


def _lines_of(file: _File, at: Position, finished: bool) -> Iterator[tuple[bytes, Position]]:
    file.f.seek(at.offset)
    offset, tail, pending = at.offset, at.tail, b""
    while chunk := file.f.read(_CHUNK):
        pending += chunk
        done = 0
        while (newline := pending.find(b"\n", done)) != -1 or len(pending) - done > _LINE_MAX:
            end = newline + 1 if newline != -1 else done + _LINE_MAX
            piece = pending[done:end]
            offset, tail, done = offset + len(piece), (tail + piece)[-_TAIL:], end
            yield piece.rstrip(b"\n"), Position(at.ino, offset, tail, at.prev_ino)
        pending = pending[done:]
    if pending and finished:
        yield pending, Position(at.ino, offset + len(pending), (tail + pending)[-_TAIL:], at.prev_ino)


def follow(event_log: str, poll_s: float = 0.5, most: int = 1000) -> Iterator[list[dict[str, Any]]]:
    """The records appended to the log from now on (where it ends is taken before this returns),
    in batches of at most `most`: one per look at the log, every `poll_s`, empty when nothing came.
    Each record comes once, through rotations, copytruncate, torn lines and bytes that are not
    UTF-8."""
    return _batches(event_log, end_of(event_log), poll_s, most)


def _batches(event_log: str, at: Position, poll_s: float, most: int) -> Iterator[list[dict[str, Any]]]:
    while True:
        batch: list[dict[str, Any]] = []
        with closing(lines_after(event_log, at)) as lines:
            for line, after in lines:
                at = after
                record = record_of(line)
                if record is not None:
                    batch.append(record)
                    if len(batch) >= most:
                        break
        yield batch
        if len(batch) < most:   # caught up: look again later
            time.sleep(poll_s)


def follow_events(event_log: str, poll_s: float = 0.5) -> Iterator[dict[str, Any]]:
    """The records appended to the log from now on, one by one, as they come (see `follow`)."""
    batches = follow(event_log, poll_s)
    return (record for batch in batches for record in batch)
