"""Which GPUs a container uses, and what the node has (through pynvml).

Feeds the fingerprint (model, count, driver versions) and the GPU UUID remapping on restore.
Containers without NVIDIA devices never import pynvml.
"""
from __future__ import annotations

from typing import Any


def spec_uses_gpu(spec: dict[str, Any]) -> bool:
    devices = ((spec.get("linux") or {}).get("devices") or [])
    if any(str(d.get("path", "")).startswith("/dev/nvidia") for d in devices):
        return True
    env = (spec.get("process") or {}).get("env") or []
    return any(e.startswith("NVIDIA_VISIBLE_DEVICES=") and e.split("=", 1)[1] not in ("", "void", "none")
               for e in env)


def fingerprint_of_spec(spec: dict[str, Any]) -> dict[str, Any] | None:
    """GPU part of the fingerprint, or None for a CPU-only container."""
    if not spec_uses_gpu(spec):
        return None
    from runtime import gpu  # pynvml: only for GPU containers
    return gpu.fingerprint_of_spec(spec)
