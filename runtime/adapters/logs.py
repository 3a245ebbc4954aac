"""Where rewarm's messages go: the runtime log that containerd / CRI-O already read (runc's --log,
in runc's json or text format), rewarm's own event log (JSON lines), and optionally one line on the
container's stderr, which is the pod's log.
"""
from __future__ import annotations

import json
import os
import sys
import time
from typing import Any, Iterator, TextIO

from runtime.front.runc_argv import RuncCall
from runtime.model.events import EventKind


def _now() -> str:
    t = time.time()
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(t)) + f".{int(t % 1 * 1e9):09d}Z"


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


def event(event_log: str, kind: EventKind, **fields: Any) -> None:
    """One JSON line per lifecycle event."""
    record = {"time": _now(), "event": kind.value, **fields}
    try:
        os.makedirs(os.path.dirname(event_log), mode=0o700, exist_ok=True)
        with open(event_log, "a", encoding="utf-8") as f:
            f.write(json.dumps(record, sort_keys=True) + "\n")
    except OSError as e:  # an unwritable event log must never stop a container
        print(f"rewarm: cannot write event log {event_log}: {e}", file=sys.stderr)


def pod_notice(msg: str) -> None:
    """One line on stderr, which for `create` is the container's stderr: the pod's log."""
    try:
        sys.stderr.write(f"rewarm: {msg}\n")
        sys.stderr.flush()
    except OSError:
        pass


def read_events(event_log: str) -> list[dict[str, Any]]:
    """Every record of the log; a line that is not a JSON object (a crash mid-write) is passed over."""
    try:
        with open(event_log, encoding="utf-8", errors="replace") as f:
            return [r for r in map(_record, f) if r is not None]
    except FileNotFoundError:
        return []


def _record(line: str) -> dict[str, Any] | None:
    try:
        record = json.loads(line)
    except ValueError:
        return None
    return record if isinstance(record, dict) else None


def follow_events(event_log: str, poll_s: float = 0.5) -> Iterator[dict[str, Any]]:
    """Records appended to the log from now on (the log is opened before this returns), as they
    come; a log made later is read from its start, a rotated or truncated one reopened."""
    f: TextIO | None = None
    try:
        opened = open(event_log, encoding="utf-8", errors="replace")
        opened.seek(0, os.SEEK_END)
        f = opened
    except FileNotFoundError:
        pass
    return _follow(event_log, f, poll_s)


def _follow(event_log: str, f: TextIO | None, poll_s: float) -> Iterator[dict[str, Any]]:
    try:
        while True:
            if f is None:
                try:
                    f = open(event_log, encoding="utf-8", errors="replace")
                except FileNotFoundError:
                    time.sleep(poll_s)
                    continue
            line = f.readline()
            if line.endswith("\n"):
                record = _record(line)
                if record is not None:
                    yield record
                continue
            f.seek(f.tell() - len(line.encode()))   # a line half written: read it again whole
            time.sleep(poll_s)
            try:
                now = os.stat(event_log)
                if now.st_ino != os.fstat(f.fileno()).st_ino or now.st_size < f.tell():
                    f.close()
                    f = open(event_log, encoding="utf-8", errors="replace")
            except FileNotFoundError:
                pass
    finally:
        if f is not None:
            f.close()
