"""What a container's processes hold open that CRIU cannot checkpoint, read from /proc before a
capture: a capture that would fail inside CRIU fails here, with the process and the reason."""
from __future__ import annotations

import os

IO_URING = "anon_inode:[io_uring]"


def _comm(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/comm", encoding="utf-8", errors="replace") as f:
            return f.read().strip()
    except OSError:
        return "?"


def io_uring_holders(pids: list[int]) -> list[str]:
    """'PID (COMM)' of each process with an io_uring instance open."""
    out = []
    for pid in pids:
        try:
            fds = os.listdir(f"/proc/{pid}/fd")
        except OSError:
            continue
        for fd in fds:
            try:
                if os.readlink(f"/proc/{pid}/fd/{fd}") == IO_URING:
                    out.append(f"{pid} ({_comm(pid)})")
                    break
            except OSError:
                continue
    return out
