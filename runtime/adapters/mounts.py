"""Mount points of this mount namespace, and unmounting whatever was left under a directory (CRIU
killed midway leaves its cgroup yard mounted in its work dir)."""
from __future__ import annotations

import subprocess


def points() -> list[str]:
    with open("/proc/self/mountinfo", encoding="utf-8") as f:
        return [line.split()[4].replace("\\040", " ") for line in f]


def under(path: str) -> list[str]:
    """Mount points at or below path, deepest first."""
    path = path.rstrip("/")
    return sorted((p for p in points() if p == path or p.startswith(path + "/")), key=len, reverse=True)


def unmount_under(path: str) -> list[str]:
    """Lazily unmount everything at or below path; returns what was mounted there."""
    found = under(path)
    for point in found:
        subprocess.run(["umount", "-l", point], capture_output=True)
    return found
