"""The operator's command line as an operator meets it: version, a config named but missing, sizes
in human units, a missing snapshot to remove, doctor as JSON, completion, and `rewarm events`
reading (and following) the event log that the runtime writes."""
from __future__ import annotations

import itertools
import json
import os
import select
import subprocess
import sys
import time

from helpers import rewarm_cli
from runtime.observe import logs
from runtime.model.events import EventKind


def test_version_missing_config_sizes_rm_and_completion():
    out = rewarm_cli("--version")
    assert out.returncode == 0 and out.stdout.strip().startswith("rewarm 0.")
    out = rewarm_cli("--config", "/nonexistent/rewarm.json", "ls")
    assert out.returncode == 2 and "--config /nonexistent/rewarm.json: no such file" in out.stderr
    assert rewarm_cli("gc", "--max-bytes", "10G").returncode == 0
    out = rewarm_cli("gc", "--max-bytes", "ten")
    assert out.returncode == 2 and "is not a size" in out.stderr
    out = rewarm_cli("rm", "no-such-snapshot")
    assert out.returncode == 1 and out.stdout == "" and "no snapshot default/no-such-snapshot" in out.stderr
    out = rewarm_cli("--print-completion", "bash")
    assert out.returncode == 0 and "complete" in out.stdout and "rewarm" in out.stdout


def test_doctor_json_lists_every_check_with_its_status():
    out = rewarm_cli("doctor", "--json")
    checks = json.loads(out.stdout)
    assert {c["check"] for c in checks} >= {"config", "runtime", "criu version", "criu check", "store"}
    assert all(c["status"] in ("OK", "WARN", "FAIL") for c in checks)
    assert out.returncode == (1 if any(c["status"] == "FAIL" for c in checks) else 0)


def test_events_shows_filters_and_follows_the_event_log(node):
    logs.event(node.event_log, EventKind.COLD_START, container="c-1", namespace="cli-a", pod="worker-0",
               snapshot="llm", reason="no snapshot cli-a/llm in the store yet", seconds=0.1)
    logs.event(node.event_log, EventKind.RESTORED, container="c-2", namespace="cli-b", pod="worker-1",
               snapshot="llm", seconds=0.4, stages={"criu": 0.2})
    shown = rewarm_cli("events", "--namespace", "cli-a").stdout.splitlines()
    assert len(shown) == 1 and "cold-start" in shown[0] and "cli-a/worker-0" in shown[0]
    assert "reason=no snapshot cli-a/llm" in shown[0]
    as_json = [json.loads(line) for line in rewarm_cli("events", "--pod", "worker-1", "--json").stdout.splitlines()]
    assert [e["event"] for e in as_json] == ["restored"] and as_json[0]["stages"] == {"criu": 0.2}
    follower = subprocess.Popen([os.path.join(os.path.dirname(sys.executable), "rewarm"), "events", "--follow",
                                 "--last", "0", "--kind", "captured"], stdout=subprocess.PIPE, text=True)
    try:
        assert follower.stdout is not None
        deadline = time.monotonic() + 30
        # It follows from where the log ends once it has started: write until it shows one (a
        # restored record, not of the kind asked for, before each captured one).
        for n in itertools.count():
            assert time.monotonic() < deadline and follower.poll() is None, "the follower showed nothing"
            logs.event(node.event_log, EventKind.RESTORED, container=f"c-{n}", namespace="cli-a", snapshot="x")
            logs.event(node.event_log, EventKind.CAPTURED, container=f"c-{n}", namespace="cli-a", pod="worker-2",
                       snapshot="llm", seconds=3.2, entry=f"abc-{n}")
            if select.select([follower.stdout], [], [], 0.2)[0]:
                break
        line = follower.stdout.readline()
        assert "captured" in line and "cli-a/worker-2" in line and "entry=abc-" in line, line
    finally:
        follower.kill()
        follower.wait()
