"""Reading an OCI runtime spec (config.json, parsed): the facts rewarm needs, as plain functions."""
from __future__ import annotations

import os
import posixpath
from typing import Any, Mapping, TypedDict, cast


# The parts of the OCI runtime spec (config-spec 1.x) that rewarm reads or changes, typed. A config.json
# is the runtime caller's input: every reader below still checks what it finds.
class Process(TypedDict, total=False):
    terminal: bool
    args: list[str]
    env: list[str]
    cwd: str


class Root(TypedDict, total=False):
    path: str
    readonly: bool


class Mount(TypedDict, total=False):
    destination: str
    source: str
    type: str
    options: list[str]


class Namespace(TypedDict, total=False):
    type: str
    path: str


class Device(TypedDict, total=False):
    path: str
    type: str
    major: int
    minor: int


class Linux(TypedDict, total=False):
    namespaces: list[Namespace]
    devices: list[Device]
    cgroupsPath: str
    seccomp: dict[str, Any]


class Hook(TypedDict, total=False):
    path: str
    args: list[str]
    env: list[str]
    timeout: int


class Spec(TypedDict, total=False):
    ociVersion: str
    process: Process
    root: Root
    hostname: str
    mounts: list[Mount]
    hooks: dict[str, list[Hook]]
    annotations: dict[str, str]
    linux: Linux


def annotations_of(spec: Spec) -> dict[str, str]:
    found = spec.get("annotations") or {}
    return {str(k): str(v) for k, v in found.items()} if isinstance(found, Mapping) else {}


def process(spec: Spec) -> Process:
    found = spec.get("process") or {}
    return found if isinstance(found, dict) else {}


def parsed(value: Any) -> Spec:
    """A config.json as parsed (json's Any) taken as a Spec: the one place that does. Not a JSON
    object: ValueError."""
    if not isinstance(value, dict):
        raise ValueError("an OCI runtime spec is a JSON object")
    return cast(Spec, value)


def rootfs(spec: Spec, bundle: str) -> str:
    """The container's root filesystem on the host (relative paths are relative to the bundle)."""
    path = str((spec.get("root") or {}).get("path") or "rootfs")
    return path if os.path.isabs(path) else os.path.join(os.path.abspath(bundle), path)


def netns_path(spec: Spec) -> str | None:
    for ns in (spec.get("linux") or {}).get("namespaces") or []:
        if ns.get("type") == "network" and ns.get("path"):
            return str(ns["path"])
    return None


def runtime_makes_netns(spec: Spec) -> bool:
    """Whether runc makes the container a network namespace of its own (one named without a path);
    False for a pod's (a path) and for the host's (no network namespace: hostNetwork)."""
    return any(ns.get("type") == "network" and not ns.get("path")
               for ns in (spec.get("linux") or {}).get("namespaces") or [])


def uses_gpu(spec: Spec) -> bool:
    devices = (spec.get("linux") or {}).get("devices") or []
    if any(str(d.get("path", "")).startswith("/dev/nvidia") for d in devices):
        return True
    return any(e.startswith("NVIDIA_VISIBLE_DEVICES=") and e.split("=", 1)[1] not in ("", "void", "none")
               for e in process(spec).get("env") or [])


def gpu_keys(spec: Spec) -> list[str]:
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


def bind_mount_of(spec: Spec, container_path: str) -> tuple[str, str] | None:
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
    return (str(mount["source"]), posixpath.relpath(path, dest)) if _is_bind(mount) and mount.get("source") else None


def bind_destinations(spec: Spec) -> set[str]:
    """Where the container's bind mounts are, normalized: the mounts a restore must be given again
    (CRIU makes tmpfs, proc and the like itself)."""
    return {posixpath.normpath(str(m["destination"])) for m in spec.get("mounts") or []
            if isinstance(m, Mapping) and m.get("destination") and _is_bind(m)}


def _is_bind(mount: Mapping[str, Any]) -> bool:
    return mount.get("type") == "bind" or bool({"bind", "rbind"} & set(mount.get("options") or []))
