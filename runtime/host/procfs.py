"""/proc/PID/stat, read in one place: a process's name, state, parent, group and start time."""
from __future__ import annotations

import os
import time
from dataclasses import dataclass
from typing import Iterator


@dataclass(frozen=True)
class Stat:
    pid: int
    name: str        # the command name (it may hold blanks and parentheses)
    state: str       # R, S, D, Z (zombie), X (dead), ...
    ppid: int
    pgid: int
    start: int       # clock ticks after boot (field 22)

    @property
    def alive(self) -> bool:
        """Not a zombie or dead: a zombie only waits for its parent to reap it."""
        return self.state not in ("Z", "X")


def stat(pid: int) -> Stat | None:
    """The process `pid` as /proc/PID/stat shows it; None where there is no such process."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            line = f.read().decode("ascii", errors="replace")
        head, _, tail = line.rpartition(")")
        fields = tail.split()
        return Stat(pid, head.split("(", 1)[1], fields[0], int(fields[1]), int(fields[2]), int(fields[22 - 3]))
    except (OSError, ValueError, IndexError):
        return None


def seconds_alive(pid: int) -> float | None:
    """How long ago `pid` was started (to the kernel's clock tick, 10 ms on most nodes)."""
    found = stat(pid)
    if found is None:
        return None
    return max(0.0, time.clock_gettime(time.CLOCK_BOOTTIME) - found.start / os.sysconf("SC_CLK_TCK"))


def every() -> Iterator[Stat]:
    """Every process of this PID namespace's /proc."""
    for name in os.listdir("/proc"):
        if name.isdigit() and (found := stat(int(name))) is not None:
            yield found
