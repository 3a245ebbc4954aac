"""The compatibility fingerprint: what must be equal between capture and restore.

Recorded in the manifest at capture, computed again for every restore; any difference is a reason
to cold start, and `differences()` words each one so that an operator can act on it.
"""
from __future__ import annotations

import fnmatch
import hashlib
import json
import os
import platform
import subprocess
from dataclasses import asdict, dataclass, field
from typing import Any

# Where the image identity comes from, most precise first: the digest thaw-runc resolves through
# containerd (and writes into config.json under its own key, outside the user's thaw.dev/ prefix),
# CRI-O's image id, then the image reference containerd's CRI gives.
IMAGE_DIGEST_KEY = "internal.thaw.dev/image-digest"
IMAGE_KEYS = (IMAGE_DIGEST_KEY, "io.kubernetes.cri-o.ImageRef", "io.kubernetes.cri.image-name",
              "io.kubernetes.cri-o.ImageName")


@dataclass(frozen=True)
class Fingerprint:
    image: str
    args: list[str]
    cwd: str
    env: dict[str, str]           # name -> sha256 of the value (values may be secrets)
    arch: str
    cpu: str                      # vendor, model and a hash of the feature flags
    kernel: str
    criu: str
    runtime: str
    gpu: dict[str, Any] | None = field(default=None)  # model, count, driver, cuda_driver

    def ident(self) -> str:
        blob = json.dumps(asdict(self), sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:16]

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Fingerprint":
        return cls(**d)


def _hash(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def image_of(annotations: dict[str, str]) -> str:
    return next((annotations[k] for k in IMAGE_KEYS if annotations.get(k)), "")


def env_hashes(env: list[str], ignore: list[str]) -> dict[str, str]:
    out = {}
    for item in env:
        name, _, value = item.partition("=")
        if not any(fnmatch.fnmatchcase(name, pat) for pat in ignore):
            out[name] = _hash(value)
    return out


def cpu_identity() -> str:
    fields: dict[str, str] = {}
    with open("/proc/cpuinfo", encoding="utf-8") as f:
        for line in f:
            if not line.strip():
                break  # the first processor is enough: all cores of a node are alike
            key, _, value = line.partition(":")
            fields[key.strip()] = value.strip()
    flags = fields.get("flags") or fields.get("Features", "")
    return f"{fields.get('vendor_id', '?')} / {fields.get('model name', '?')} / flags {_hash(flags)}"


def tool_version(argv: list[str]) -> str:
    """First line that names a version ("runc version 1.1.5", "Version: 4.2.1")."""
    try:
        out = subprocess.run(argv, capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.TimeoutExpired) as e:
        return f"unavailable ({e})"
    for line in out.splitlines():
        if "ersion" in line:
            return line.strip()
    return out.strip().splitlines()[0] if out.strip() else "unknown"


def of_container(spec: dict[str, Any], *, env_ignore: list[str], criu: str, runtime: str,
                 gpu: dict[str, Any] | None) -> Fingerprint:
    process = spec.get("process") or {}
    return Fingerprint(
        image=image_of(spec.get("annotations") or {}),
        args=list(process.get("args") or []),
        cwd=process.get("cwd") or "/",
        env=env_hashes(process.get("env") or [], env_ignore),
        arch=platform.machine(),
        cpu=cpu_identity(),
        kernel=os.uname().release,
        criu=tool_version([criu, "--version"]),
        runtime=tool_version([runtime, "--version"]),
        gpu=gpu,
    )


def differences(recorded: Fingerprint, here: Fingerprint) -> list[str]:
    """Human-readable reasons why a snapshot recorded as `recorded` cannot restore `here`."""
    reasons = []
    for name in ("image", "args", "cwd", "arch", "cpu", "kernel", "criu", "runtime", "gpu"):
        a, b = getattr(recorded, name), getattr(here, name)
        if a != b:
            reasons.append(f"{name}: snapshot has {a!r}, this container/node has {b!r}")
    changed = sorted(k for k in set(recorded.env) | set(here.env) if recorded.env.get(k) != here.env.get(k))
    if changed:
        reasons.append(f"environment differs in {', '.join(changed)}")
    return reasons
