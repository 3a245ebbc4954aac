"""GPU facts through NVML (pynvml): the node's GPUs, the ones a container is given, and the UUID
pairs for restoring a snapshot onto other GPUs of the same model."""
from __future__ import annotations

import contextlib
import functools
import os
import threading
from dataclasses import dataclass
from typing import Any

from runtime.model import oci_spec
from runtime.model.errors import GpuMismatch
from runtime.model.oci_spec import Spec


@dataclass(frozen=True, kw_only=True)
class Gpu:
    index: int
    minor: int
    uuid: str
    model: str
    memory_bytes: int
    mig: bool
    persistence: bool


@dataclass(frozen=True)
class Inventory:
    gpus: list[Gpu]
    driver: str
    cuda_driver: str

    def by_key(self, key: str) -> Gpu:
        """A GPU named as NVIDIA_VISIBLE_DEVICES / CDI name it: an index or a UUID."""
        for g in self.gpus:
            if key in (str(g.index), g.uuid):
                return g
        raise GpuMismatch(f"the container asks for GPU {key!r}, which this node does not have")


_reading = threading.Lock()   # one reader at a time: a read begun ahead is waited for, not repeated


def inventory() -> Inventory:
    """The node's GPUs, read once per process: a create, a capture or a doctor run asks for them
    several times (fingerprint, device map), and they do not change within one."""
    with _reading:
        return _read_inventory()


_ahead: list[threading.Thread] = []


def read_ahead() -> None:
    """Begin reading the inventory on another thread: NVML's start takes ~0.1 s, which then overlaps
    a restore's own checks instead of preceding its fingerprint. A failure there is not kept: the
    caller's own inventory() reads again and raises it."""
    thread = threading.Thread(target=_quietly_read, daemon=True, name="rewarm-nvml")
    _ahead.append(thread)
    thread.start()


def settle(timeout: float = 5.0) -> None:
    """Let a read begun ahead end (at most `timeout` s): a process about to exec another program or
    to fork must not do so with NVML half started on another thread."""
    for thread in _ahead:
        thread.join(timeout)


def _quietly_read() -> None:
    with contextlib.suppress(Exception):
        inventory()


@functools.cache
def _read_inventory() -> Inventory:
    import pynvml
    pynvml.nvmlInit()
    try:
        gpus = []
        for i in range(pynvml.nvmlDeviceGetCount()):
            h = pynvml.nvmlDeviceGetHandleByIndex(i)
            try:
                mig = bool(pynvml.nvmlDeviceGetMigMode(h)[0])
            except pynvml.NVMLError:
                mig = False
            gpus.append(Gpu(index=i, minor=pynvml.nvmlDeviceGetMinorNumber(h), uuid=_text(pynvml.nvmlDeviceGetUUID(h)),
                            model=_text(pynvml.nvmlDeviceGetName(h)), memory_bytes=pynvml.nvmlDeviceGetMemoryInfo(h).total,
                            mig=mig, persistence=pynvml.nvmlDeviceGetPersistenceMode(h) == pynvml.NVML_FEATURE_ENABLED))
        cuda = pynvml.nvmlSystemGetCudaDriverVersion()
        return Inventory(gpus, _text(pynvml.nvmlSystemGetDriverVersion()), f"{cuda // 1000}.{cuda % 1000 // 10}")
    finally:
        pynvml.nvmlShutdown()


def _text(v: Any) -> str:
    return v.decode() if isinstance(v, bytes) else str(v)


def container_gpus(spec: Spec, inv: Inventory) -> list[Gpu]:
    keys = oci_spec.gpu_keys(spec)
    if keys == ["all"]:
        return list(inv.gpus)
    out = []
    for key in keys:
        if key.startswith("minor:"):
            minor = int(key[len("minor:"):])
            out.append(next((g for g in inv.gpus if g.minor == minor), None) or inv.by_key(f"minor {minor}"))
        else:
            out.append(inv.by_key(key))
    return out


def fingerprint_of_spec(spec: Spec) -> dict[str, Any] | None:
    """The GPU part of a container's fingerprint: None for a CPU-only container (no NVML then)."""
    if not oci_spec.uses_gpu(spec):
        return None
    inv = inventory()
    gpus = container_gpus(spec, inv)
    if not gpus:
        raise GpuMismatch("the container uses NVIDIA devices but no GPU could be identified")
    models = sorted({g.model for g in gpus})
    return {"model": " + ".join(models), "count": len(gpus), "driver": inv.driver, "cuda_driver": inv.cuda_driver}


def uuids_of_spec(spec: Spec) -> list[str]:
    return [g.uuid for g in container_gpus(spec, inventory())]


def device_map(recorded: list[str], current: list[str]) -> dict[str, str]:
    """Pair the GPUs of the snapshot with the container's new ones, in device order."""
    if len(recorded) != len(current):
        raise GpuMismatch(f"snapshot used {len(recorded)} GPU(s), this container has {len(current)}")
    return {old: new for old, new in zip(recorded, current) if old != new}


def _compute_processes(pids: list[int]) -> list[tuple[str, int, int]]:
    """(GPU UUID, pid, GPU memory bytes) of these processes' CUDA contexts."""
    import pynvml
    pynvml.nvmlInit()
    try:
        out = []
        for i in range(pynvml.nvmlDeviceGetCount()):
            h = pynvml.nvmlDeviceGetHandleByIndex(i)
            uuid = _text(pynvml.nvmlDeviceGetUUID(h))
            out += [(uuid, int(p.pid), int(p.usedGpuMemory or 0))
                    for p in pynvml.nvmlDeviceGetComputeRunningProcesses(h) if p.pid in pids]
        return out
    finally:
        pynvml.nvmlShutdown()


def processes_on_gpus(pids: list[int]) -> dict[str, list[str]]:
    """Which of these processes hold a CUDA context on which GPU (by UUID)."""
    out: dict[str, list[str]] = {}
    for uuid, pid, _ in _compute_processes(pids):
        out.setdefault(str(pid), []).append(uuid)
    return out


def gpu_memory_of(pids: list[int]) -> int:
    """Bytes of GPU memory these processes hold (a capture writes them to the snapshot)."""
    return sum(used for _, _, used in _compute_processes(pids))


def libcuda_dir() -> str:
    """Where this node's libcuda.so.1 lives (containers need it on LD_LIBRARY_PATH)."""
    import ctypes
    ctypes.CDLL("libcuda.so.1")
    with open("/proc/self/maps") as f:
        return os.path.dirname(next(line.split()[-1] for line in f if "libcuda.so" in line))


def device_nodes(index: int = 0) -> list[dict[str, Any]]:
    """OCI device entries for one GPU and the driver's control and UVM nodes."""
    out = []
    for path in (f"/dev/nvidia{index}", "/dev/nvidiactl", "/dev/nvidia-uvm", "/dev/nvidia-uvm-tools"):
        st = os.stat(path)
        out.append({"path": path, "type": "c", "major": os.major(st.st_rdev), "minor": os.minor(st.st_rdev),
                    "fileMode": 0o666, "uid": 0, "gid": 0})
    return out


def doctor_checks() -> list[tuple[str, str, str]]:
    try:
        inv = inventory()
    except Exception as e:  # no driver, no NVML: a CPU node
        return [("OK", "GPU", f"no NVIDIA GPU usable here ({type(e).__name__}): CPU workers only")]
    out = [("OK", "GPU driver", f"{inv.driver}, CUDA driver API {inv.cuda_driver}")]
    major = int(inv.driver.split(".")[0]) if inv.driver.split(".")[0].isdigit() else 0
    out.append(("OK" if major >= 570 else "WARN", "GPU checkpoint support",
                "driver >= 570: checkpoint API with CRIU" + (", GPU remapping (>= 580)" if major >= 580 else "")
                if major >= 570 else f"driver {inv.driver}: need >= 570 (>= 580 to restore onto other GPUs)"))
    for g in inv.gpus:
        out.append(("WARN" if g.mig else "OK", f"GPU {g.index}",
                    f"{g.model} {g.uuid} {g.memory_bytes / 2**30:.0f} GiB, MIG {'on (not supported)' if g.mig else 'off'}, "
                    f"persistence {'on' if g.persistence else 'off'}"))
    return out
