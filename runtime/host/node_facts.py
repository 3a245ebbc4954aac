"""Facts of this node that a snapshot's fingerprint records: CPU, kernel, tool versions."""
from __future__ import annotations

import functools
import os
import platform
import subprocess

from runtime.model.fingerprint import short_hash


@functools.cache
def cpu_identity() -> str:
    fields: dict[str, str] = {}
    with open("/proc/cpuinfo", encoding="utf-8") as f:
        for line in f:
            if not line.strip():
                break  # the first processor is enough: all cores of a node are alike
            key, _, value = line.partition(":")
            fields[key.strip()] = value.strip()
    flags = fields.get("flags") or fields.get("Features", "")
    return f"{fields.get('vendor_id', '?')} / {fields.get('model name', '?')} / flags {short_hash(flags)}"


def arch() -> str:
    return platform.machine()


def kernel() -> str:
    return os.uname().release


def tool_version(argv: list[str]) -> str:
    """First line that names a version ("runc version 1.1.5", "Version: 4.2.1")."""
    try:
        out = version_output(tuple(argv))
    except (OSError, subprocess.TimeoutExpired) as e:
        return f"unavailable ({e})"
    for line in out.splitlines():
        if "ersion" in line:
            return line.strip()
    return out.strip().splitlines()[0] if out.strip() else "unknown"


@functools.cache   # once per process: a create asks for CRIU's in its config and in the fingerprint
def version_output(argv: tuple[str, ...]) -> str:
    """What `argv` (a tool's version command) prints; a tool that cannot run raises, uncached."""
    return subprocess.run(argv, capture_output=True, text=True, timeout=10).stdout
