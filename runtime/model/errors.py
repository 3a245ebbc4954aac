"""rewarm's exceptions: one tree under RewarmError. The message says what a user can act on; the
class says which path follows (cold start, refusal, a failed command)."""
from __future__ import annotations


MAX_MESSAGE = 1000


def shown(value: object, limit: int = 80) -> str:
    """A value from a user as a message quotes it: its repr, cut to `limit` characters."""
    text = repr(value)
    return text if len(text) <= limit else f"{text[:limit]}... ({len(str(value))} characters)"


class RewarmError(Exception):
    """Base of everything rewarm raises on purpose. The CLI prints it as one line."""


class InvalidInput(RewarmError, ValueError):
    """A value a user must fix (an annotation, a name, a config key); the message names it. It ends
    up in the pod's log line, the event log and a metrics label: a value of kilobytes is cut."""

    def __init__(self, message: str) -> None:
        super().__init__(message if len(message) <= MAX_MESSAGE else message[:MAX_MESSAGE] + "...")


class SettingsError(InvalidInput):
    """The node's rewarm config is unreadable or has unknown or mistyped keys."""


class NotRestorable(RewarmError):
    """No usable snapshot for this container (missing, incompatible, corrupt): cold start instead."""


class SnapshotDamaged(RewarmError):
    """A snapshot's files are not what its manifest says (missing, resized, not plain, foreign-owned,
    a checksum that differs) or it has no valid manifest: the store's finding."""


class UnsafeRootfsDiff(RewarmError):
    """A rootfs diff that would reach outside the rootfs it is laid into, or cannot be read or laid."""


class GpuMismatch(RewarmError):
    """The container's GPUs are not the ones a snapshot was taken with."""


class RestoreFailed(RewarmError):
    """The runtime's restore ran and failed; what it left has been cleaned up."""


class CaptureFailed(RewarmError):
    """A capture did not produce a snapshot; the store and the source container are unharmed."""


class StoreError(RewarmError):
    """The store itself is unusable (permissions, a lock held, a name not found)."""


class StoreBusy(StoreError):
    """A snapshot name's lock is held (a restore, capture or pull) and the caller would not wait."""


class ArchiveError(RewarmError):
    """A checkpoint archive is unreadable, incomplete or hostile: nothing was stored."""


class RegistryError(RewarmError):
    """A push or pull did not complete (registry unreachable, refused, or a blob that does not match
    its digest); nothing was published in the store or under the tag."""


class TransferInterrupted(RegistryError):
    """A blob transfer broke off or stalled: what arrived is sound so far and kept, for the next
    pull of the same manifest to resume from."""


class InstallError(RewarmError):
    """A container engine's config cannot be given the rewarm handler."""


class HookError(RewarmError):
    """An OCI hook cannot do its part; the runtime fails the container with this message."""


class WorkerHookFailed(RewarmError):
    """The worker's quiesce or resume hook did not answer 200."""


class ClientError(RewarmError):
    """A gRPC call to containerd or its CRI failed."""


class CudaError(RewarmError):
    """A CUDA driver call failed; the message names the call and the CUresult."""

    def __init__(self, call: str, code: int, name: str) -> None:
        super().__init__(f"{call} failed: {name} (CUresult {code})")
        self.code = code


class CudaUnavailable(CudaError):
    """No CUDA driver, or one without the checkpoint API."""
