"""The lifecycle events rewarm records (one JSON line each in the event log), how a container's
start ended, and the reason codes of cold starts and failures. The metrics and `rewarm-hook
poststop` read them back."""
from __future__ import annotations

from enum import Enum


class EventKind(Enum):
    RESTORED = "restored"                 # a container was restored from a snapshot
    COLD_START = "cold-start"             # an annotated container started cold (reason says why)
    RESTORE_REFUSED = "restore-refused"   # restore impossible and rewarm.dev/fallback: fail
    CAPTURING = "capturing"               # an on-ready watch found the worker ready: its capture begins
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


class ReasonCode(Enum):
    """Why a restore did not happen (a cold start, a refusal) or a capture, pull or push failed: the
    event's `code`, beside its human `reason`, and the metrics' `code` label. Set where the engine
    decides (an exception's reason_code, model/errors.py); never read back out of the reason's text."""
    UNKNOWN = "unknown"                        # an event written before rewarm recorded codes
    # the situation calls for a cold start: nothing broke
    NO_SNAPSHOT = "no_snapshot"                # no entry of that name for the pod's namespace (yet)
    NOT_FITTING = "not_fitting"                # none of this container's fingerprint (image, args, env, node)
    SNAPSHOT_CHANGED = "snapshot_changed"      # the entry was replaced or removed as the restore took its lock
    UNSUPPORTED = "unsupported"                # a container rewarm never restores (one with a terminal)
    CONTAINER_EXISTS = "container_exists"      # the runtime has a container of that id already
    INVALID_ANNOTATION = "invalid_annotation"  # a rewarm.dev/ annotation (or a value it names) is invalid
    PULL_REFUSED = "pull_refused"              # the node's policy refuses the pull (registry, signature, format)
    PULL_TIMEOUT = "pull_timeout"              # the pull on miss goes on past its wait; the next pod restores
    # something broke: the restore failure ratio counts these (is_failure)
    INVALID_CONFIG = "invalid_config"          # the node's rewarm config (or a key file it names) is unusable
    SNAPSHOT_DAMAGED = "snapshot_damaged"      # an entry's files are not what its manifest says, or it has none
    UNSAFE_ROOTFS = "unsafe_rootfs"            # the rootfs diff reaches outside the rootfs, or cannot be laid
    GPU_MISMATCH = "gpu_mismatch"              # the container's GPUs are not the snapshot's, or cannot be told
    RESTORE_FAILED = "restore_failed"          # the runtime's restore (CRIU) ran and failed
    TIMEOUT = "timeout"                        # the restore ran past restore_timeout_s or the create's budget
    RESUME_FAILED = "resume_failed"            # restored, but the worker's resume hook failed
    PULL_FAILED = "pull_failed"                # the pull on miss did not complete
    REGISTRY_ERROR = "registry_error"          # a push or pull broke off (registry, network, digest)
    TRANSFER_INTERRUPTED = "transfer_interrupted"   # a blob transfer broke off or stalled: kept to resume
    POD_GONE = "pod_gone"                      # a background pull ended with the pod it was for
    CAPTURE_FAILED = "capture_failed"          # a capture made no snapshot (the worker runs on)
    STORE_ERROR = "store_error"                # the store is unusable (permissions, a lock)
    CONTAINERD_ERROR = "containerd_error"      # containerd (or its CRI) did not answer as it should
    SYSTEM_ERROR = "system_error"              # a system call or file operation failed (OSError)
    UNEXPECTED = "unexpected"                  # a bug: rewarm's runtime log has the traceback

    @property
    def is_failure(self) -> bool:
        """Whether something broke, as opposed to a cold start that the situation calls for."""
        return self not in _EXPECTED


_EXPECTED = frozenset({ReasonCode.UNKNOWN, ReasonCode.NO_SNAPSHOT, ReasonCode.NOT_FITTING, ReasonCode.SNAPSHOT_CHANGED,
                       ReasonCode.UNSUPPORTED, ReasonCode.CONTAINER_EXISTS, ReasonCode.INVALID_ANNOTATION,
                       ReasonCode.PULL_REFUSED, ReasonCode.PULL_TIMEOUT})


# Kinds that record something that did not happen as asked (a refusal, a failure).
_FAILURE_KINDS = frozenset({EventKind.RESTORE_REFUSED, EventKind.CAPTURE_FAILED, EventKind.HOOK_FAILED,
                            EventKind.PULL_FAILED, EventKind.PUSH_FAILED})


def is_failure(kind: EventKind, code: object) -> bool:
    """Whether an event records something that broke or was refused (a Warning, for Kubernetes), as
    opposed to what the situation calls for: a cold start is one only where its code says something
    broke (the first pod's "no snapshot yet" is expected); a pull that finds no snapshot yet, or none
    of this node's fingerprint (a node pool of mixed kernels or CPUs), is expected too; the other
    failure kinds always are."""
    if kind is EventKind.COLD_START:
        return reason_code(code).is_failure
    if kind is EventKind.PULL_FAILED and reason_code(code) in (ReasonCode.NOT_FITTING, ReasonCode.NO_SNAPSHOT):
        return False
    return kind in _FAILURE_KINDS


def reason_code(value: object) -> ReasonCode:
    """The code an event records; UNKNOWN for an event from before codes (or one it does not know)."""
    try:
        return ReasonCode(value)
    except (ValueError, TypeError):
        return ReasonCode.UNKNOWN
