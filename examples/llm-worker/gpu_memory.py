"""GPU memory that leaves the GPU for a capture and comes back after it: the weights (read back from
the model files) and the KV cache (zeroed: a request attends only to what it wrote, the rest masked).

Each lives in a Block: GPU memory at a fixed device address, made with CUDA's virtual memory API.
The address range is reserved once; the physical memory under it is released and created again.
Releasing it before a capture keeps what the node has on disk anyway (16 GB for an 8B model) out
of the GPU checkpoint, which the driver copies back from pageable memory at a few GB/s. A wake
maps new memory at the same address, so every captured CUDA graph stays valid, and parallel
readers read the safetensors files back through pinned buffers, each reader's copy to the GPU
overlapping its next read.

The weights' layout is the files' own (each file's data section is one contiguous span of the
block), so a wake copies files, not tensors. Before it reads, the files must still be the ones the
weights came from (size and mtime); if not, the wake fails and rewarm cold-starts the pod instead.
"""
from __future__ import annotations

import ctypes
import itertools
import json
import os
import struct
import threading
import time

import torch

_DTYPES = {"BF16": torch.bfloat16, "F16": torch.float16, "F32": torch.float32}
_SPAN_ALIGN = 2 << 20     # each file's span starts on a 2 MiB boundary (tensor alignment inside it is the file's)


class _Location(ctypes.Structure):
    _fields_ = [("type", ctypes.c_int), ("id", ctypes.c_int)]


class _AllocationProp(ctypes.Structure):
    _fields_ = [("type", ctypes.c_int), ("requestedHandleTypes", ctypes.c_int), ("location", _Location),
                ("win32HandleMetaData", ctypes.c_void_p), ("allocFlags", ctypes.c_uint8 * 8)]


class _AccessDesc(ctypes.Structure):
    _fields_ = [("location", _Location), ("flags", ctypes.c_int)]


_PINNED, _ON_DEVICE, _READ_WRITE = 1, 1, 3


class _Driver:
    """The few calls of libcuda's virtual memory API this needs."""
    def __init__(self) -> None:
        self.lib = ctypes.CDLL("libcuda.so.1")
        self.contexts: dict[int, ctypes.c_void_p] = {}

    def __call__(self, name: str, *args) -> None:
        _check(getattr(self.lib, name)(*args), name)

    def use_device(self, ordinal: int) -> None:
        """Make the device's primary context (the one torch uses) current on this thread."""
        if ordinal not in self.contexts:
            dev, ctx = ctypes.c_int(), ctypes.c_void_p()
            self("cuDeviceGet", ctypes.byref(dev), ordinal)
            self("cuDevicePrimaryCtxRetain", ctypes.byref(ctx), dev)
            self.contexts[ordinal] = ctx
        self("cuCtxSetCurrent", self.contexts[ordinal])


def _round_up(n: int, to: int) -> int:
    return -(-n // to) * to


def _check(rc, what: str) -> None:
    if int(rc) != 0:
        raise RuntimeError(f"{what} failed with CUDA error {int(rc)}")


class _CudaBytes:
    """Device bytes as __cuda_array_interface__, so that torch can view them without owning them."""
    def __init__(self, ptr: int, size: int):
        self.__cuda_array_interface__ = {"shape": (size,), "typestr": "|u1", "data": (ptr, False), "strides": None,
                                        "version": 3}


def safetensors_index(model_dir: str) -> tuple[dict[str, tuple], list[tuple[str, int, int]]]:
    """name -> (file, offset in file, bytes, dtype, shape), and each file's (path, data start, data bytes)."""
    tensors, files = {}, []
    for name in sorted(os.listdir(model_dir)):
        if not name.endswith(".safetensors"):
            continue
        path = os.path.join(model_dir, name)
        with open(path, "rb") as f:
            (length,) = struct.unpack("<Q", f.read(8))
            header = json.loads(f.read(length))
        start, end = 8 + length, 8 + length
        for key, t in header.items():
            if key == "__metadata__":
                continue
            first, last = t["data_offsets"]
            tensors[key] = (path, start + first, last - first, t["dtype"], tuple(t["shape"]))
            end = max(end, start + last)
        files.append((path, start, end - start))
    return tensors, files


def _identity(path: str) -> tuple[int, int]:
    """Size and mtime: an image layer unpacked on another node keeps both (not the inode)."""
    st = os.stat(path)
    return st.st_size, st.st_mtime_ns


class Block:
    """GPU memory at a fixed device address whose physical memory can be given back and taken again
    (a CUDA graph captured over it stays valid across both)."""
    def __init__(self, size: int, device: int):
        self.cuda, self.device = _Driver(), device
        self.cuda.use_device(device)
        self.prop = _AllocationProp(type=_PINNED, location=_Location(_ON_DEVICE, device))
        granularity = ctypes.c_size_t()
        self.cuda("cuMemGetAllocationGranularity", ctypes.byref(granularity), ctypes.byref(self.prop), 0)
        self.size = _round_up(size, granularity.value)
        ptr = ctypes.c_uint64()
        self.cuda("cuMemAddressReserve", ctypes.byref(ptr), ctypes.c_size_t(self.size), ctypes.c_size_t(0),
                  ctypes.c_uint64(0), ctypes.c_uint64(0))
        self.ptr, self.handle = ptr.value, None
        try:
            self.map()
        except RuntimeError:
            self.cuda("cuMemAddressFree", ctypes.c_uint64(self.ptr), ctypes.c_size_t(self.size))
            raise
        self.bytes = torch.as_tensor(_CudaBytes(self.ptr, self.size), device=f"cuda:{device}")

    @property
    def mapped(self) -> bool:
        return self.handle is not None

    def view(self, offset: int, dtype: torch.dtype, shape: tuple[int, ...]) -> torch.Tensor:
        nbytes = torch.Size(shape).numel() * dtype.itemsize
        return self.bytes[offset:offset + nbytes].view(dtype).view(shape)

    def map(self) -> None:
        if self.handle is not None:
            return
        self.cuda.use_device(self.device)
        handle = ctypes.c_uint64()
        self.cuda("cuMemCreate", ctypes.byref(handle), ctypes.c_size_t(self.size), ctypes.byref(self.prop),
                  ctypes.c_uint64(0))
        try:
            self.cuda("cuMemMap", ctypes.c_uint64(self.ptr), ctypes.c_size_t(self.size), ctypes.c_size_t(0), handle,
                      ctypes.c_uint64(0))
        except RuntimeError:
            self.cuda("cuMemRelease", handle)
            raise
        try:
            access = _AccessDesc(location=_Location(_ON_DEVICE, self.device), flags=_READ_WRITE)
            self.cuda("cuMemSetAccess", ctypes.c_uint64(self.ptr), ctypes.c_size_t(self.size), ctypes.byref(access),
                      ctypes.c_size_t(1))
        except RuntimeError:
            self.cuda("cuMemUnmap", ctypes.c_uint64(self.ptr), ctypes.c_size_t(self.size))
            self.cuda("cuMemRelease", handle)
            raise
        self.handle = handle     # mapped only once it is usable

    def unmap(self) -> None:
        """Give the physical memory back; the address range stays reserved."""
        if self.handle is None:
            return
        torch.cuda.synchronize(self.device)
        self.cuda.use_device(self.device)
        handle = self.handle
        self.cuda("cuMemUnmap", ctypes.c_uint64(self.ptr), ctypes.c_size_t(self.size))
        self.handle = None       # unusable from here on, even if the release below fails
        self.cuda("cuMemRelease", handle)


class Weights:
    """A model's parameters in one Block, laid out as their safetensors files are."""
    def __init__(self, files: list[tuple[str, int, int]], device: int):
        self.spans, size = [], 0      # (path, data start in file, bytes, offset in the block)
        for path, start, length in files:
            self.spans.append((path, start, length, size))
            size = _round_up(size + length, _SPAN_ALIGN)
        self.block, self.identities = Block(size, device), {}

    def adopt(self, model: torch.nn.Module, tensors: dict[str, tuple]) -> None:
        """Move each parameter into its place in the block (a copy on the GPU); the old memory is freed."""
        offsets = {path: (start, at) for path, start, _, at in self.spans}
        for name, p in model.named_parameters():
            path, offset, _, _, _ = tensors[name]
            start, at = offsets[path]
            view = self.block.view(at + offset - start, p.dtype, tuple(p.shape))
            view.copy_(p.data)
            p.data = view
        torch.cuda.synchronize()
        self.identities = {path: _identity(path) for path, *_ in self.spans}

    def files(self) -> list[str]:
        return [path for path, *_ in self.spans]

    def release(self) -> None:
        self.block.unmap()

    def reload(self, threads: int, chunk: int = 16 << 20) -> dict:
        """Map new memory at the same address and read the weights back from their files."""
        if self.block.mapped:
            return {}
        changed = [p for p, ident in self.identities.items() if not os.path.exists(p) or _identity(p) != ident]
        if changed:
            raise RuntimeError(f"weights changed on disk since the capture: {', '.join(changed)}")
        t0 = time.monotonic()
        self.block.map()
        t1 = time.monotonic()
        pieces = [(path, start + i, min(chunk, length - i), at + i)
                  for path, start, length, at in self.spans for i in range(0, length, chunk)]
        errors: list[BaseException] = []
        take = itertools.count()
        workers = [threading.Thread(target=self._reader, args=(pieces, take, chunk, errors)) for _ in range(threads)]
        for w in workers:
            w.start()
        for w in workers:
            w.join()
        if errors:
            self.release()
            raise RuntimeError(f"reading the weights back failed: {errors[0]}")
        t2 = time.monotonic()
        total = sum(length for _, _, length, _ in self.spans)
        return {"map_s": round(t1 - t0, 4), "read_s": round(t2 - t1, 4), "bytes": total,
                "gbps": round(total / max(t2 - t1, 1e-9) / 1e9, 2), "threads": threads}

    def _reader(self, pieces: list[tuple[str, int, int, int]], take: itertools.count, chunk: int,
                errors: list[BaseException]) -> None:
        """Two pinned buffers: read into one while the other's copy to the GPU runs."""
        fds: dict[str, int] = {}
        pinned: list[torch.Tensor] = []
        try:
            torch.cuda.set_device(self.block.device)
            stream = torch.cuda.Stream()
            # pinned here and unpinned at the end (torch's pinned-memory cache would keep them)
            buffers = [torch.empty(chunk, dtype=torch.uint8) for _ in range(2)]
            for b in buffers:
                _check(torch.cuda.cudart().cudaHostRegister(b.data_ptr(), chunk, 0), "cudaHostRegister")
                pinned.append(b)
            windows = [memoryview((ctypes.c_char * chunk).from_address(b.data_ptr())).cast("B") for b in buffers]
            done: list[torch.cuda.Event | None] = [None, None]
            for n in itertools.count():
                i = next(take)
                if i >= len(pieces) or errors:
                    break
                path, offset, length, at = pieces[i]
                k = n % 2
                if done[k] is not None:
                    done[k].synchronize()
                if path not in fds:
                    fds[path] = os.open(path, os.O_RDONLY)
                got = os.preadv(fds[path], [windows[k][:length]], offset)
                if got != length:
                    raise OSError(f"{path}: short read at {offset} ({got} of {length} bytes)")
                with torch.cuda.stream(stream):
                    self.block.bytes[at:at + length].copy_(buffers[k][:length], non_blocking=True)
                    done[k] = torch.cuda.Event()
                    done[k].record(stream)
            stream.synchronize()
        except BaseException as e:  # noqa: BLE001  (handed to the waiting thread)
            errors.append(e)
        finally:
            torch.cuda.synchronize(self.block.device)
            for b in pinned:
                torch.cuda.cudart().cudaHostUnregister(b.data_ptr())
            for fd in fds.values():
                os.close(fd)


def zeroed(shapes: list[tuple[int, ...]], dtype: torch.dtype, device: int) -> tuple[Block, list[torch.Tensor]]:
    """Zeroed tensors of these shapes in one Block, for memory whose content need not survive a sleep
    (zero it again after mapping it back)."""
    sizes = [torch.Size(s).numel() * dtype.itemsize for s in shapes]
    offsets = [sum(_round_up(n, _SPAN_ALIGN) for n in sizes[:i]) for i in range(len(sizes))]
    block = Block(offsets[-1] + sizes[-1], device)
    block.bytes.zero_()
    return block, [block.view(at, dtype, shape) for at, shape in zip(offsets, shapes)]


def weights(model: torch.nn.Module, model_dir: str) -> tuple[Weights | None, str]:
    """The model's weights moved into a Block, or None and why they must stay where they are."""
    tensors, files = safetensors_index(model_dir)
    for name, p in model.named_parameters():
        t = tensors.get(name)
        if t is None:
            return None, f"parameter {name} is not in the safetensors files"
        if _DTYPES.get(t[3]) != p.dtype or t[4] != tuple(p.shape):
            return None, f"parameter {name} is {p.dtype} {tuple(p.shape)} but {t[3]} {t[4]} on disk"
    used = {tensors[name][0] for name, _ in model.named_parameters()}
    try:
        moved = Weights([f for f in files if f[0] in used], model.device.index or 0)
    except RuntimeError as e:   # the move needs room for a second copy of the weights for a moment
        return None, f"no room to move them ({e})"
    moved.adopt(model, tensors)
    return moved, ""
