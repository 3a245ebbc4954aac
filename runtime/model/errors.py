"""rewarm's exceptions: one tree under RewarmError. The message says what a user can act on; the
class says which path follows (cold start, refusal, a failed command), and its reason_code how the
event and the metrics count it (a raise site that knows better names its own)."""
from __future__ import annotations

from runtime.model.events import ReasonCode


MAX_MESSAGE = 1000


def shown(value: object, limit: int = 80) -> str:
    """A value from a user as a message quotes it: its repr, cut to `limit` characters."""
    text = repr(value)
    return text if len(text) <= limit else f"{text[:limit]}... ({len(str(value))} characters)"


class RewarmError(Exception):
    """Base of everything rewarm raises on purpose. The CLI prints it as one line."""
    reason_code = ReasonCode.UNEXPECTED

    def __init__(self, *args: object, code: ReasonCode | None = None) -> None:
        super().__init__(*args)
        if code is not None:
            self.reason_code = code


def code_of(e: BaseException) -> ReasonCode:
    """The reason code of whatever ended a restore, capture, pull or push: the one place that
    decides it for exceptions that are not rewarm's own."""
    if isinstance(e, RewarmError):
        return e.reason_code
    if isinstance(e, OSError):
        return ReasonCode.SYSTEM_ERROR
    return ReasonCode.UNEXPECTED


class InvalidInput(RewarmError, ValueError):
    """A value a user must fix (an annotation, a name, a config key); the message names it. It ends
    up in the pod's log line and the event log: a value of kilobytes is cut. On a create the
    annotations (and what they name) are the only input a user gives: hence the code."""
    reason_code = ReasonCode.INVALID_ANNOTATION

    def __init__(self, message: str) -> None:
        super().__init__(message if len(message) <= MAX_MESSAGE else message[:MAX_MESSAGE] + "...")


class SettingsError(InvalidInput):
    """The node's rewarm config is unreadable or has unknown or mistyped keys."""
    reason_code = ReasonCode.INVALID_CONFIG


class NotRestorable(RewarmError):
    """No usable snapshot for this container (missing, incompatible, corrupt): cold start instead.
    Each raise site says which case it is: the code is not optional."""

    def __init__(self, message: str, code: ReasonCode) -> None:
        super().__init__(message, code=code)


class SnapshotDamaged(RewarmError):
    """A snapshot's files are not what its manifest says (missing, resized, not plain, foreign-owned,
    a checksum that differs) or it has no valid manifest: the store's finding."""
    reason_code = ReasonCode.SNAPSHOT_DAMAGED


class UnsafeRootfsDiff(RewarmError):
    """A rootfs diff that would reach outside the rootfs it is laid into, or cannot be read or laid."""
    reason_code = ReasonCode.UNSAFE_ROOTFS


class GpuMismatch(RewarmError):
    """The container's GPUs are not the ones a snapshot was taken with."""
    reason_code = ReasonCode.GPU_MISMATCH


class RestoreFailed(RewarmError):
    """The runtime's restore ran and failed; what it left has been cleaned up."""
    reason_code = ReasonCode.RESTORE_FAILED


class CaptureFailed(RewarmError):
    """A capture did not produce a snapshot; the store and the source container are unharmed."""
    reason_code = ReasonCode.CAPTURE_FAILED


class StoreError(RewarmError):
    """The store itself is unusable (permissions, a lock held, a name not found)."""
    reason_code = ReasonCode.STORE_ERROR


class StoreBusy(StoreError):
    """A snapshot name's lock is held (a restore, capture or pull) and the caller would not wait."""


class ArchiveError(RewarmError):
    """A checkpoint archive is unreadable, incomplete or hostile: nothing was stored."""


class RegistryError(RewarmError):
    """A push or pull did not complete (registry unreachable, refused, or a blob that does not match
    its digest); nothing was published in the store or under the tag."""
    reason_code = ReasonCode.REGISTRY_ERROR


class PullRefused(RegistryError):
    """The node's policy refuses a pull (a registry it may not pull from for that namespace, a
    signature it requires, another format): nothing was fetched."""
    reason_code = ReasonCode.PULL_REFUSED


class TransferInterrupted(RegistryError):
    """A blob transfer broke off or stalled: what arrived is sound so far and kept, for the next
    pull of the same manifest to resume from."""
    reason_code = ReasonCode.TRANSFER_INTERRUPTED


class InstallError(RewarmError):
    """A container engine's config cannot be given the rewarm handler."""


class HookError(RewarmError):
    """An OCI hook cannot do its part; the runtime fails the container with this message."""


class WorkerHookFailed(RewarmError):
    """The worker's quiesce or resume hook did not answer 200."""


class ClientError(RewarmError):
    """A gRPC call to containerd or its CRI failed."""
    reason_code = ReasonCode.CONTAINERD_ERROR


class CudaError(RewarmError):
    """A CUDA driver call failed; the message names the call and the CUresult."""

    def __init__(self, call: str, code: int, name: str) -> None:
        super().__init__(f"{call} failed: {name} (CUresult {code})")
        self.code = code


class CudaUnavailable(CudaError):
    """No CUDA driver, or one without the checkpoint API."""
