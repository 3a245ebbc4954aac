"""CRIU's network lock, undone by hand. During a restore CRIU drops all traffic of the container's
network namespace (an iptables chain named CRIU, or an nftables table CRIU-*) and lifts the lock at
the end; a CRIU killed midway leaves it in place, and the cold-started container would then never
be reached. This lifts a lock left in a namespace (the pod's, which outlives the failed restore)."""
from __future__ import annotations

import shutil
import subprocess

CHAIN = "CRIU"
UNLOCK = f"*filter\n-D INPUT -j {CHAIN}\n-D OUTPUT -j {CHAIN}\n-F {CHAIN}\n-X {CHAIN}\nCOMMIT\n"


def _in(netns: str, *argv: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["nsenter", f"--net={netns}", *argv], input=stdin, capture_output=True, text=True)


def release(netns: str | None) -> list[str]:
    """Remove CRIU's lock from the namespace at `netns` (a path); returns what was removed."""
    removed: list[str] = []
    if not netns:
        return removed
    for tool in ("iptables", "ip6tables"):
        if shutil.which(tool) and _in(netns, tool, "-S", CHAIN).returncode == 0:
            _in(netns, f"{tool}-restore", "--noflush", stdin=UNLOCK)
            removed.append(f"{tool} chain {CHAIN}")
    if shutil.which("nft"):
        for line in _in(netns, "nft", "list", "tables").stdout.splitlines():
            words = line.split()   # "table inet CRIU-1234"
            if len(words) == 3 and words[2].startswith(CHAIN):
                _in(netns, "nft", "delete", "table", words[1], words[2])
                removed.append(f"nft table {words[1]} {words[2]}")
    return removed
