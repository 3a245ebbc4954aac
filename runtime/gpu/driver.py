"""The CUDA driver's checkpoint API (libcuda.so.1, driver >= 550; GPU remapping >= 580), by ctypes.

A process's CUDA state goes running -> locked -> checkpointed (GPU memory moved into host memory,
where CRIU can dump it) and back: restore -> locked -> unlock -> running.
"""
from __future__ import annotations

import ctypes
import enum
import uuid

from runtime.model.errors import CudaError, CudaUnavailable


NOT_INITIALIZED = 3   # CUresult for a process that has no CUDA state (never called cuInit, or not yet)


class ProcessState(enum.Enum):
    RUNNING = 0
    LOCKED = 1
    CHECKPOINTED = 2
    FAILED = 3


class _LockArgs(ctypes.Structure):  # CUcheckpointLockArgs
    _fields_ = [("timeoutMs", ctypes.c_uint), ("reserved0", ctypes.c_uint), ("reserved1", ctypes.c_uint64 * 7)]


class _Reserved64(ctypes.Structure):  # CUcheckpointCheckpointArgs / CUcheckpointUnlockArgs
    _fields_ = [("reserved", ctypes.c_uint64 * 8)]


class _Uuid(ctypes.Structure):
    _fields_ = [("bytes", ctypes.c_ubyte * 16)]


class _GpuPair(ctypes.Structure):
    _fields_ = [("oldUuid", _Uuid), ("newUuid", _Uuid)]


class _RestoreArgs(ctypes.Structure):  # CUcheckpointRestoreArgs
    _fields_ = [("gpuPairs", ctypes.POINTER(_GpuPair)), ("gpuPairsCount", ctypes.c_uint),
                ("reserved", ctypes.c_char * (52 - ctypes.sizeof(ctypes.c_void_p))), ("reserved1", ctypes.c_uint64)]


def uuid_bytes(gpu_uuid: str) -> bytes:
    """'GPU-8c6a...' (nvidia-smi / NVML form) -> the 16 raw bytes of a CUuuid."""
    text = gpu_uuid[4:] if gpu_uuid.upper().startswith(("GPU-", "MIG-")) else gpu_uuid
    return uuid.UUID(text).bytes


class Driver:
    """The checkpoint calls of one loaded libcuda."""

    def __init__(self, library: str = "libcuda.so.1") -> None:
        try:
            self.lib = ctypes.CDLL(library)
        except OSError as e:
            raise CudaUnavailable("dlopen(libcuda.so.1)", -1, f"no CUDA driver: {e}") from e
        if not hasattr(self.lib, "cuCheckpointProcessLock"):
            raise CudaUnavailable("cuCheckpointProcessLock", -1, "driver has no checkpoint API (need >= 550)")
        self._check("cuInit", self.lib.cuInit(0))

    def _check(self, call: str, code: int) -> None:
        if code == 0:
            return
        name = ctypes.c_char_p()
        self.lib.cuGetErrorName(code, ctypes.byref(name))
        raise CudaError(call, code, (name.value or b"CUDA_ERROR_UNKNOWN").decode())

    def state(self, pid: int) -> ProcessState:
        out = ctypes.c_int()
        self._check("cuCheckpointProcessGetState", self.lib.cuCheckpointProcessGetState(pid, ctypes.byref(out)))
        return ProcessState(out.value)

    def restore_thread_id(self, pid: int) -> int | None:
        """The thread that performs `pid`'s CUDA restore; None for a process without CUDA state
        (an engine's tree holds such processes beside the ones that use the GPU)."""
        out = ctypes.c_int()
        try:
            self._check("cuCheckpointProcessGetRestoreThreadId",
                        self.lib.cuCheckpointProcessGetRestoreThreadId(pid, ctypes.byref(out)))
        except CudaError as e:
            if e.code == NOT_INITIALIZED:
                return None
            raise
        return out.value

    def lock(self, pid: int, timeout_ms: int = 0) -> None:
        args = _LockArgs(timeoutMs=timeout_ms)
        self._check("cuCheckpointProcessLock", self.lib.cuCheckpointProcessLock(pid, ctypes.byref(args)))

    def checkpoint(self, pid: int) -> None:
        self._check("cuCheckpointProcessCheckpoint",
                    self.lib.cuCheckpointProcessCheckpoint(pid, ctypes.byref(_Reserved64())))

    def restore(self, pid: int, device_map: dict[str, str] | None = None) -> None:
        """Restore; with a device map, every pair given goes to the driver (gpu.device_map
        already leaves out GPUs that did not move)."""
        pairs = list((device_map or {}).items())
        if not pairs:
            self._check("cuCheckpointProcessRestore", self.lib.cuCheckpointProcessRestore(pid, None))
            return
        array = (_GpuPair * len(pairs))()
        for i, (old, new) in enumerate(pairs):
            array[i].oldUuid.bytes[:] = list(uuid_bytes(old))
            array[i].newUuid.bytes[:] = list(uuid_bytes(new))
        args = _RestoreArgs(gpuPairs=array, gpuPairsCount=len(pairs))
        self._check("cuCheckpointProcessRestore", self.lib.cuCheckpointProcessRestore(pid, ctypes.byref(args)))

    def unlock(self, pid: int) -> None:
        self._check("cuCheckpointProcessUnlock",
                    self.lib.cuCheckpointProcessUnlock(pid, ctypes.byref(_Reserved64())))

    def bring_back(self, pid: int) -> ProcessState:
        """Whatever state a failed capture left `pid` in, make it run again."""
        state = self.state(pid)
        if state == ProcessState.CHECKPOINTED:
            self.restore(pid)
            state = self.state(pid)
        if state == ProcessState.LOCKED:
            self.unlock(pid)
        return self.state(pid)
