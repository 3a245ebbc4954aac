"""A container without thaw annotations behaves through thaw-runc exactly as through runc."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time

import pytest

from conftest import events
from runtime import bundles, runc_argv
from runtime.lab import thaw_runc

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
    through_thaw = lifecycle(lab, thaw_runc(), "shimmed")
    assert through_thaw == through_runc
    assert through_thaw["output"] == ["err-line", "out-line"] and through_thaw["exec"] == "exec-ok\n"
    assert not any("shimmed" in e.get("container", "") for e in events(node))  # thaw stayed out of it


def test_exit_code_and_version_pass_through(lab):
    for args in (["--version"], ["features"], ["state", "no-such-container"]):
        a = subprocess.run(["runc", *args], capture_output=True, text=True)
        b = subprocess.run([thaw_runc(), *args], capture_output=True, text=True)
        assert (a.returncode, a.stdout) == (b.returncode, b.stdout)


@pytest.mark.parametrize("argv, verb, cid, bundle", [
    (["--root", "/r", "--log", "/l", "--log-format", "json", "create", "--bundle", "/b", "--pid-file", "/p", "x"],
     "create", "x", "/b"),
    (["--root=/r", "--systemd-cgroup", "create", "-b", "create", "id1"], "create", "id1", "create"),
    (["create", "id2", "--bundle", "/b2"], "create", "id2", "/b2"),
    (["-root", "/r", "create", "--console-socket", "/s", "--no-pivot", "--bundle=/b3", "id3"], "create", "id3", "/b3"),
    (["--debug", "start", "id4"], "start", "id4", "."),
    (["--version"], None, None, "."),
    (["exec", "--pid-file", "/p", "id5", "sh"], "exec", None, "."),
])
def test_argv_is_read_like_runc_reads_it(argv, verb, cid, bundle):
    call = runc_argv.parse(argv)
    assert (call.verb, call.container_id, call.bundle) == (verb, cid, bundle)


def test_passthrough_imports_nothing_heavy():
    code = ("import sys; sys.argv=['thaw-runc','--version']; import runtime.shim as s; "
            "import os; os.execvp=lambda *a: (print(sorted(m for m in sys.modules if m.startswith(('runtime','jsonschema','pynvml','psutil','pyroute2')))), sys.exit(0)); s.main()")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert json.loads(out.replace("'", '"')) == ["runtime", "runtime.runc_argv", "runtime.shim"]


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
def test_both_halves_of_thaw_runc_read_the_runtime_from_config_as_json_does(layout, tmp_path):
    """thaw-runc (sh) and its engine find the real runtime without a JSON library; both must read
    what json reads. The runtime here is a probe script that prints what it was given."""
    probe = tmp_path / "probe-runtime"
    probe.write_text("#!/bin/sh\necho probe \"$@\"\n")
    probe.chmod(0o755)
    text = layout.replace("RT", str(probe))
    value = json.loads(text).get("runtime")
    expected = value if isinstance(value, str) else None
    from runtime.shim import top_level_string
    assert top_level_string(text, "runtime") == expected
    config = tmp_path / "config.json"
    config.write_text(text)
    out = subprocess.run([thaw_runc(), "--root", str(tmp_path), "state", "no-such"], capture_output=True, text=True,
                         env={**os.environ, "THAW_CONFIG": str(config)})
    if expected:
        assert out.stdout == f"probe --root {tmp_path} state no-such\n"
    else:
        assert "probe" not in out.stdout and "does not exist" in out.stderr   # runc itself answered


@pytest.fixture
def door(tmp_path):
    """thaw-runc's sh front door beside two probes that print who got the call: an engine and a
    runtime. Only the routing is under test here; the lifecycle tests above use the real parts."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    shutil.copy(thaw_runc(), bin_dir / "thaw-runc")
    for name in ("thaw-runc-engine", "runtime"):
        (bin_dir / name).write_text(f"#!/bin/sh\necho {name} \"$@\"\n")
        (bin_dir / name).chmod(0o755)
    (tmp_path / "config.json").write_text(json.dumps({"runtime": str(bin_dir / "runtime")}))
    annotated, plain, root = tmp_path / "annotated", tmp_path / "plain", tmp_path / "root"
    for bundle, marks in ((annotated, {"thaw.dev/snapshot": "x"}), (plain, {"other": "y"})):
        bundle.mkdir()
        (bundle / "config.json").write_text(json.dumps({"ociVersion": "1.0.2", "annotations": marks}))
    (root / "restored").mkdir(parents=True)
    (root / "restored" / "thaw-restored").write_text("{}")

    def call(*args: str, cwd: str | None = None) -> str:
        out = subprocess.run([str(bin_dir / "thaw-runc"), *args], capture_output=True, text=True, cwd=cwd,
                             env={**os.environ, "THAW_CONFIG": str(tmp_path / "config.json")})
        return out.stdout.split()[0]
    return call, annotated, plain, root


def test_the_front_door_sends_only_thaws_containers_to_the_engine(door):
    call, annotated, plain, root = door
    for args in (["create", "--bundle", str(annotated), "c1"], ["create", "-b", str(annotated), "c1"],
                 [f"--root={root}", "create", f"--bundle={annotated}", "--pid-file", "/p", "c1"],
                 ["--log", "/l", "--log-format", "json", "create", "--console-socket", "/s", "-b", str(annotated), "c1"]):
        assert call(*args) == "thaw-runc-engine", args
    assert call("create", "c1", cwd=str(annotated)) == "thaw-runc-engine"      # the bundle defaults to the cwd
    assert call("create", "--bundle", str(plain), "c1") == "runtime"
    assert call("--root", str(root), "start", "restored") == "thaw-runc-engine"
    assert call(f"--root={root}", "--debug", "start", "restored") == "thaw-runc-engine"
    assert call("--root", str(root), "start", "other") == "runtime"
    for verb in (["state", "restored"], ["kill", "restored", "KILL"], ["delete", "-f", "restored"], ["--version"]):
        assert call("--root", str(root), *verb) == "runtime", verb
