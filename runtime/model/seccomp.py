"""The seccomp rule rewarm adds to the containers it may capture: no io_uring.

CRIU cannot checkpoint an io_uring instance (its rings are mappings CRIU does not know), and
libraries take one without being asked: libuv >= 1.45, and so uvloop, the event loop of vLLM's API
server, sets one up for every loop. Refused with ENOSYS, as a kernel without io_uring would refuse
it, they fall back to epoll and plain syscalls. The rule goes into the spec before the container
starts, so the process that is captured later never held a ring; a restored process keeps the
filter CRIU recorded.
"""
from __future__ import annotations

import copy
from typing import Any

from runtime.model.oci_spec import Spec

IO_URING_SYSCALLS = ("io_uring_setup", "io_uring_enter", "io_uring_register")
ENOSYS = 38
RULE: dict[str, Any] = {"names": list(IO_URING_SYSCALLS), "action": "SCMP_ACT_ERRNO", "errnoRet": ENOSYS}


def blocks_io_uring(spec: Spec) -> bool:
    """Whether the spec already refuses io_uring with rewarm's rule (and no other rule allows it)."""
    rules = ((spec.get("linux") or {}).get("seccomp") or {}).get("syscalls") or []
    ours = [r for r in rules if r == RULE]
    others = [r for r in rules if r != RULE and set(r.get("names") or ()) & set(IO_URING_SYSCALLS)]
    return bool(ours) and not others


def with_io_uring_blocked(spec: Spec) -> Spec:
    """A copy of the spec whose seccomp profile refuses io_uring: the container's own profile with
    every other rule about io_uring taken out (libseccomp refuses two rules for one syscall), or,
    where it has none, a profile that allows everything else."""
    out = copy.deepcopy(spec)
    linux = out.setdefault("linux", {})
    profile = linux.get("seccomp") or {"defaultAction": "SCMP_ACT_ALLOW"}
    rules = []
    for rule in profile.get("syscalls") or []:
        names = [n for n in rule.get("names") or () if n not in IO_URING_SYSCALLS]
        if names or not rule.get("names"):
            rules.append({**rule, "names": names} if rule.get("names") else rule)
    profile["syscalls"] = [*rules, copy.deepcopy(RULE)]
    linux["seccomp"] = profile
    return out
