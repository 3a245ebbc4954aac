"""Mount points of this mount namespace, and unmounting whatever was left under a directory (CRIU
killed midway leaves its cgroup yard mounted in its work dir)."""
from __future__ import annotations

import re
import subprocess
from dataclasses import dataclass

_ESCAPED = re.compile(r"\\([0-7]{3})")   # the kernel writes space, tab, newline and backslash as \ooo


@dataclass(frozen=True)
class Mount:
    """One line of /proc/self/mountinfo."""
    root: str        # the mount's root within its filesystem
    point: str       # where it is mounted
    fstype: str
    source: str
    options: str     # the superblock's options (an overlay's upperdir=...)


def table() -> list[Mount]:
    """This mount namespace's mounts, in mount order: the one reader of /proc/self/mountinfo."""
    found = []
    with open("/proc/self/mountinfo", encoding="utf-8") as f:
        for line in f:
            pre, _, post = line.rstrip("\n").partition(" - ")
            fields, rest = pre.split(), post.split()
            fstype, source, options = (rest + ["", "", ""])[:3]
            found.append(Mount(_unescaped(fields[3]), _unescaped(fields[4]), fstype, _unescaped(source), options))
    return found


def _unescaped(text: str) -> str:
    return _ESCAPED.sub(lambda m: chr(int(m.group(1), 8)), text) if "\\" in text else text


def points() -> list[str]:
    return [m.point for m in table()]


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
