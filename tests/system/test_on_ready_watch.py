"""The on-ready watcher rewarm-runc starts beside a cold-started `rewarm.dev/capture: on-ready`
container, through real runc: it captures once the worker is ready; while it waits it starts no
process and costs next to no CPU however long that takes; it gives up at ready_timeout_s with an
event, and ends at once when its container goes away."""
from __future__ import annotations

import json
import os
import time
from typing import Iterator

import psutil
import pytest

from helpers import config_named, events
from runtime.snapshot import store
from runtime.lab.runc_lab import Container, Lab
from runtime.model.settings import Settings

READY_TIMEOUT_S = 8
NEVER_READY = {"rewarm.dev/capture": "on-ready", "rewarm.dev/ready-file": "/never-ready"}
TICK = os.sysconf("SC_CLK_TCK")


@pytest.fixture
def short_deadline(node: Settings, tmp_path) -> Iterator[Settings]:
    """The node's config with ready_timeout_s of READY_TIMEOUT_S, named by $REWARM_CONFIG (so
    rewarm-runc, and the watcher it starts, read it)."""
    path = tmp_path / "config.json"
    path.write_text(json.dumps({**node.to_json(), "ready_timeout_s": READY_TIMEOUT_S}))
    with config_named(str(path)):
        yield node


def watcher_of(c: Container, timeout: float = 30) -> psutil.Process:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for p in psutil.process_iter(["cmdline"]):
            cmd = p.info["cmdline"] or []
            if "runtime.engine.on_ready" in cmd and any(f'"{c.cid}"' in a for a in cmd):
                return p
        time.sleep(0.05)
    raise TimeoutError(f"no watcher for {c.cid}")


def stat_of(pid: int) -> list[int]:
    """/proc/PID/stat from field 3 on, numbers only where numbers are (index = field - 3)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return [int(x) if x.lstrip("-").isdigit() else 0 for x in fields]


CMINFLT, UTIME, STIME, CUTIME, CSTIME = 11 - 3, 14 - 3, 15 - 3, 16 - 3, 17 - 3


def watch_until_exit(p: psutil.Process, timeout: float) -> tuple[list[int], float]:
    """The watcher's last /proc/PID/stat before it ended, and when it was last seen running."""
    deadline, last, seen = time.monotonic() + timeout, stat_of(p.pid), time.time()
    while time.monotonic() < deadline:
        try:
            if p.status() == psutil.STATUS_ZOMBIE:
                return last, seen
            last, seen = stat_of(p.pid), time.time()
        except (psutil.NoSuchProcess, FileNotFoundError):
            return last, seen
        time.sleep(0.05)
    raise TimeoutError(f"the watcher {p.pid} still runs after {timeout}s")


def skipped(node: Settings, c: Container) -> list[dict]:
    return [e for e in events(node, "capture-skipped") if e["container"] == c.cid]


def test_a_watcher_of_a_pod_never_ready_starts_no_process_and_gives_up_at_its_deadline(lab: Lab, short_deadline):
    node = short_deadline
    c = lab.create("never-ready", lab.worker({"rewarm.dev/snapshot": "never-ready", **NEVER_READY}))
    assert c.create_rc == 0, c.runtime_log()
    watcher = watcher_of(c)
    c.wait_ready()
    first, since = stat_of(watcher.pid), time.time()   # the worker serves: the watcher polls its ready file
    last, last_seen = watch_until_exit(watcher, READY_TIMEOUT_S + 15)
    lived = last_seen - watcher.create_time()
    assert last[CMINFLT] == 0 and last[CUTIME] + last[CSTIME] == 0   # no child ever ran and was reaped
    cpu = (last[UTIME] + last[STIME] - first[UTIME] - first[STIME]) / TICK
    assert cpu <= 0.01 * (last_seen - since) + 1 / TICK, (cpu, last_seen - since)   # at most 1% of a core
    assert READY_TIMEOUT_S - 1 <= lived <= READY_TIMEOUT_S + 3, lived
    (gave_up,) = skipped(node, c)
    assert gave_up["reason"] == f"not ready within ready_timeout_s ({READY_TIMEOUT_S}s): the watch gave up"
    assert c.get()["served"] >= 1                                    # the pod itself is left alone
    assert store.Store(node.store).entries("default", "never-ready") == []


def test_a_watcher_ends_at_once_when_its_container_goes_away(lab: Lab, node: Settings):
    c = lab.create("goes-away", lab.worker({"rewarm.dev/snapshot": "goes-away", **NEVER_READY}))
    watcher = watcher_of(c)
    c.wait_ready()
    c.runtime_cmd("delete", "--force", c.cid, check=True)
    watch_until_exit(watcher, 5)
    (ended,) = skipped(node, c)
    assert ended["reason"] == "container stopped before it was ready"


def test_a_watcher_captures_its_container_once_ready(lab: Lab, node: Settings):
    c = lab.create("gets-ready", lab.worker({"rewarm.dev/snapshot": "gets-ready", "rewarm.dev/capture": "on-ready"}))
    watcher = watcher_of(c)
    before, _ = c.wait_ready()
    watch_until_exit(watcher, 120)
    captured = [e for e in events(node, "captured") if e["container"] == c.cid]
    assert captured and skipped(node, c) == []
    (entry,) = store.Store(node.store).entries("default", "gets-ready")
    assert entry.ident == captured[0]["entry"]
    assert c.get()["boot_id"] == before["boot_id"]                  # it kept serving
