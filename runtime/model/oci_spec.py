"""Reading an OCI runtime spec (config.json, parsed): the facts rewarm needs, as plain functions."""
from __future__ import annotations

import os
import posixpath
from typing import Any, Mapping

Spec = dict[str, Any]


def annotations_of(spec: Mapping[str, Any]) -> dict[str, str]:
    found = spec.get("annotations") or {}
    return {str(k): str(v) for k, v in found.items()} if isinstance(found, Mapping) else {}


def process(spec: Mapping[str, Any]) -> dict[str, Any]:
    found = spec.get("process") or {}
    return found if isinstance(found, dict) else {}


def rootfs(spec: Mapping[str, Any], bundle: str) -> str:
    """The container's root filesystem on the host (relative paths are relative to the bundle)."""
    path = str((spec.get("root") or {}).get("path") or "rootfs")
    return path if os.path.isabs(path) else os.path.join(os.path.abspath(bundle), path)


def netns_path(spec: Mapping[str, Any]) -> str | None:
    for ns in (spec.get("linux") or {}).get("namespaces") or []:
        if ns.get("type") == "network" and ns.get("path"):
            return str(ns["path"])
    return None


def uses_gpu(spec: Mapping[str, Any]) -> bool:
    devices = (spec.get("linux") or {}).get("devices") or []
    if any(str(d.get("path", "")).startswith("/dev/nvidia") for d in devices):
        return True
    return any(e.startswith("NVIDIA_VISIBLE_DEVICES=") and e.split("=", 1)[1] not in ("", "void", "none")
               for e in process(spec).get("env") or [])


def gpu_keys(spec: Mapping[str, Any]) -> list[str]:
    """The GPUs a container is given, in its order: `minor:N` for device nodes, else indices or
    UUIDs from NVIDIA_VISIBLE_DEVICES (or 'all'), else CDI names."""
    devices = (spec.get("linux") or {}).get("devices") or []
    minors = [d["path"][len("/dev/nvidia"):] for d in devices
              if str(d.get("path", "")).startswith("/dev/nvidia") and d["path"][len("/dev/nvidia"):].isdigit()]
    if minors:
        return [f"minor:{m}" for m in minors]
    for e in process(spec).get("env") or []:
        if e.startswith("NVIDIA_VISIBLE_DEVICES="):
            return [k.strip() for k in e.split("=", 1)[1].split(",") if k.strip()]
    return [v.split("=", 1)[1] for k, v in annotations_of(spec).items()
            if k.startswith("cdi.k8s.io/") and "nvidia.com/gpu=" in v]


def bind_mount_of(spec: Mapping[str, Any], container_path: str) -> tuple[str, str] | None:
    """The bind mount that holds a container path: (its source on the host, the path below its
    destination); None where the mount that holds it (the deepest destination, of equal ones the
    later) is not a bind mount, or none does."""
    path = posixpath.normpath(container_path)
    best: tuple[str, Mapping[str, Any]] | None = None
    for m in spec.get("mounts") or []:
        if not isinstance(m, Mapping) or not m.get("destination"):
            continue
        dest = posixpath.normpath(str(m["destination"]))
        inside = path == dest or path.startswith(dest.rstrip("/") + "/")
        if inside and (best is None or len(dest) >= len(best[0])):
            best = (dest, m)
    if best is None:
        return None
    dest, mount = best
    is_bind = mount.get("type") == "bind" or bool({"bind", "rbind"} & set(mount.get("options") or []))
    return (str(mount["source"]), posixpath.relpath(path, dest)) if is_bind and mount.get("source") else None
