"""The lifecycle events rewarm records (one JSON line each in the event log), and how a
container's start ended. The metrics and `rewarm-hook poststop` read them back."""
from __future__ import annotations

from enum import Enum


class EventKind(Enum):
    RESTORED = "restored"                 # a container was restored from a snapshot
    COLD_START = "cold-start"             # an annotated container started cold (reason says why)
    RESTORE_REFUSED = "restore-refused"   # restore impossible and rewarm.dev/fallback: fail
    CAPTURED = "captured"
    CAPTURE_FAILED = "capture-failed"
    CAPTURE_SKIPPED = "capture-skipped"   # an on-ready watch ended without a capture
    HOOK_FAILED = "hook-failed"           # the worker's resume hook failed after a capture
    PULLED = "pulled"                     # a snapshot arrived from a registry (rewarm pull, pull on miss)
    PULL_FAILED = "pull-failed"
    PUSHED = "pushed"                     # a snapshot went to a registry (rewarm push, push on capture)
    PUSH_FAILED = "push-failed"
    PRESTART = "prestart"                 # rewarm-hook prestart prepared a restore
    STOPPED = "stopped"                   # rewarm-hook poststop: the container is gone
    WARMED = "warmed"                     # an entry was read into the page cache


class Outcome(Enum):
    """How a stopped container had started."""
    RESTORED = "restored"
    COLD = "cold"
    REFUSED = "refused"
    UNKNOWN = "unknown"

    @classmethod
    def of_start(cls, kind: str | None) -> "Outcome":
        return {EventKind.RESTORED.value: cls.RESTORED, EventKind.COLD_START.value: cls.COLD,
                EventKind.RESTORE_REFUSED.value: cls.REFUSED}.get(kind or "", cls.UNKNOWN)


START_KINDS = (EventKind.RESTORED, EventKind.COLD_START, EventKind.RESTORE_REFUSED)
