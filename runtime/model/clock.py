"""Times as rewarm writes and reads them: RFC 3339 in UTC (the event log's to the nanosecond)."""
from __future__ import annotations

import calendar
import time

_SECONDS = "%Y-%m-%dT%H:%M:%S"


def rfc3339(t: float | None = None) -> str:
    """`t` (now when None) to the second: a manifest's and an image's creation time, an Event's."""
    return time.strftime(_SECONDS, time.gmtime(time.time() if t is None else t)) + "Z"


def rfc3339_ns(t: float | None = None) -> str:
    """`t` (now when None) to the nanosecond: an event-log record's time, which sorts as text."""
    t = time.time() if t is None else t
    return time.strftime(_SECONDS, time.gmtime(t)) + f".{int(t % 1 * 1e9):09d}Z"


def seconds_of(stamp: str) -> float:
    """The time.time() of an RFC 3339 UTC time as rewarm writes it (ValueError for anything else)."""
    whole, _, fraction = stamp.rstrip("Z").partition(".")
    return calendar.timegm(time.strptime(whole, _SECONDS)) + float(f"0.{fraction or 0}")
