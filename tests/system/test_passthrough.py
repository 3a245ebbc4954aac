"""A container without rewarm annotations behaves through rewarm-runc exactly as through runc."""
from __future__ import annotations

import json
import os
import subprocess
import time

import pytest

from helpers import events
from runtime.lab import bundles
from runtime.lab.runc_lab import rewarm_runc

SLEEPER = ["/bin/sh", "-c", "echo out-line; echo err-line >&2; exec sleep 60"]


def lifecycle(lab, runtime: str, name: str) -> dict:
    """create/start/state/exec/kill/delete a short-lived container; record what a shim would see."""
    worker = bundles.Worker(args=SLEEPER)
    c = lab.create(name, worker, runtime=runtime, start=False)
    seen = {"create_rc": c.create_rc, "status_created": c.state().get("status")}
    seen["start_rc"] = c.runtime_cmd("start", c.cid).returncode
    seen["status_running"] = c.state().get("status")
    seen["exec"] = c.runtime_cmd("exec", c.cid, "/bin/echo", "exec-ok").stdout
    seen["ps_has_sleep"] = "sleep" in c.runtime_cmd("ps", c.cid).stdout
    seen["pause_rc"] = c.runtime_cmd("pause", c.cid).returncode
    seen["status_paused"] = c.state().get("status")
    seen["resume_rc"] = c.runtime_cmd("resume", c.cid).returncode
    seen["kill_rc"] = c.runtime_cmd("kill", c.cid, "KILL").returncode
    deadline = time.monotonic() + 10
    while c.state().get("status") != "stopped" and time.monotonic() < deadline:
        time.sleep(0.05)
    seen["status_end"] = c.state().get("status")
    seen["delete_rc"] = c.runtime_cmd("delete", c.cid).returncode
    seen["state_after_delete_rc"] = c.runtime_cmd("state", c.cid).returncode
    c.wait_output("err-line", timeout=5)
    seen["output"] = sorted(c.text().splitlines())
    seen["bad_verb"] = c.runtime_cmd("no-such-verb").returncode
    return seen


def test_unannotated_container_lifecycle_matches_plain_runc(lab, node):
    through_runc = lifecycle(lab, "runc", "plain")
    through_rewarm = lifecycle(lab, rewarm_runc(), "shimmed")
    assert through_rewarm == through_runc
    assert through_rewarm["output"] == ["err-line", "out-line"] and through_rewarm["exec"] == "exec-ok\n"
    assert not any("shimmed" in e.get("container", "") for e in events(node))  # rewarm stayed out of it


def test_exit_code_and_version_pass_through(lab):
    for args in (["--version"], ["features"], ["state", "no-such-container"]):
        a = subprocess.run(["runc", *args], capture_output=True, text=True)
        b = subprocess.run([rewarm_runc(), *args], capture_output=True, text=True)
        assert (a.returncode, a.stdout) == (b.returncode, b.stdout)


CONFIG_LAYOUTS = [
    '{"runtime": "RT"}',
    '{"store": "/s", "runtime" : "RT", "criu_options": ["network-lock skip"]}',
    '{"nested": {"other": 1}, "runtime": "RT"}',
    '{"env_ignore": ["runtime"], "store": "/s", "runtime":"RT"}',
    '{"store": "a\\"runtime\\": \\"trap", "runtime": "RT"}',
    '{\n  "env_ignore": [\n    "runtime"\n  ],\n  "runtime": "RT"\n}\n',
    '{"env_ignore": ["runtime"], "store": "/s"}',
    '{"runtime": 5}',
    '{}',
]


@pytest.mark.parametrize("layout", CONFIG_LAYOUTS)
def test_both_halves_of_rewarm_runc_read_the_runtime_from_config_as_json_does(layout, tmp_path):
    """rewarm-runc (sh) and its engine find the real runtime without a JSON library; both must read
    what json reads. The runtime here is a probe script that prints what it was given."""
    probe = tmp_path / "probe-runtime"
    probe.write_text("#!/bin/sh\necho probe \"$@\"\n")
    probe.chmod(0o755)
    text = layout.replace("RT", str(probe))
    value = json.loads(text).get("runtime")
    expected = value if isinstance(value, str) else None
    from runtime.front.real_runtime import top_level_string
    assert top_level_string(text, "runtime") == expected
    config = tmp_path / "config.json"
    config.write_text(text)
    out = subprocess.run([rewarm_runc(), "--root", str(tmp_path), "state", "no-such"], capture_output=True, text=True,
                         env={**os.environ, "REWARM_CONFIG": str(config)})
    if expected:
        assert out.stdout == f"probe --root {tmp_path} state no-such\n"
    else:
        assert "probe" not in out.stdout and "does not exist" in out.stderr   # runc itself answered
