"""The hot path of rewarm-runc: argv read as runc reads it, pass-through that imports nothing heavy,
and the sh front door routing only rewarm's containers to the engine (probes stand in for the
engine and the runtime: only the routing is under test here; the system tests use the real parts)."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest

from runtime.adapters import settings_file
from runtime.engine import create
from runtime.front import runc_argv
from runtime.lab.runc_lab import rewarm_runc
from runtime.model.errors import SettingsError
from runtime.node import doctor


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


def test_the_pass_through_path_imports_nothing_heavy():
    code = ("import sys; sys.argv=['rewarm-runc-engine','--version']; import runtime.engine.runc_entry as e; "
            "import os; os.execvp=lambda *a: (print(sorted(m for m in sys.modules if m.startswith(('runtime','json',"
            "'jsonschema','pynvml','psutil','pyroute2','grpc','dataclasses')))), sys.exit(0)); e.main()")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split("'")[1::2] == ["runtime", "runtime.engine", "runtime.engine.runc_entry", "runtime.front",
                                    "runtime.front.dispatch", "runtime.front.names", "runtime.front.runc_argv"]


@pytest.fixture
def door(tmp_path):
    """rewarm-runc's sh front door beside two probes that print who got the call: an engine and a
    runtime. Only the routing is under test here; the lifecycle tests above use the real parts."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    shutil.copy(rewarm_runc(), bin_dir / "rewarm-runc")
    for name in ("rewarm-runc-engine", "runtime"):
        (bin_dir / name).write_text(f"#!/bin/sh\necho {name} \"$@\"\n")
        (bin_dir / name).chmod(0o755)
    (tmp_path / "config.json").write_text(json.dumps({"runtime": str(bin_dir / "runtime")}))
    annotated, plain, root = tmp_path / "annotated", tmp_path / "plain", tmp_path / "root"
    for bundle, marks in ((annotated, {"rewarm.dev/snapshot": "x"}), (plain, {"other": "y"})):
        bundle.mkdir()
        (bundle / "config.json").write_text(json.dumps({"ociVersion": "1.0.2", "annotations": marks}))
    (root / "restored").mkdir(parents=True)
    (root / "restored" / "rewarm-restored").write_text("{}")

    def call(*args: str, cwd: str | None = None) -> str:
        out = subprocess.run([str(bin_dir / "rewarm-runc"), *args], capture_output=True, text=True, cwd=cwd,
                             env={**os.environ, "REWARM_CONFIG": str(tmp_path / "config.json")})
        return out.stdout.split()[0] if out.stdout.split() else f"exit {out.returncode}"
    return call, annotated, plain, root


def test_the_front_door_sends_only_rewarms_containers_to_the_engine(door):
    call, annotated, plain, root = door
    for args in (["create", "--bundle", str(annotated), "c1"], ["create", "-b", str(annotated), "c1"],
                 [f"--root={root}", "create", f"--bundle={annotated}", "--pid-file", "/p", "c1"],
                 ["--log", "/l", "--log-format", "json", "create", "--console-socket", "/s", "-b", str(annotated), "c1"]):
        assert call(*args) == "rewarm-runc-engine", args
    assert call("create", "c1", cwd=str(annotated)) == "rewarm-runc-engine"      # the bundle defaults to the cwd
    assert call("create", "--bundle", str(plain), "c1") == "runtime"
    assert call("run", "--detach", "--bundle", str(annotated), "c1") == "rewarm-runc-engine"   # run = create+start
    assert call("run", "-b", str(plain), "c1") == "runtime"
    for verb in (["state", "restored"], ["kill", "restored", "KILL"], ["delete", "-f", "restored"]):
        assert call("--root", str(root), *verb) == "runtime", verb
    assert call(f"--root={root}", "--debug", "start", "restored") == "exit 0"   # answered by the door itself
    assert (root / "restored" / "rewarm-restored.started").exists()
    assert call("--root", str(root), "start", "restored") == "runtime"           # a second start: runc's answer
    assert call("--root", str(root), "start", "other") == "runtime"
    for verb in (["state", "restored"], ["kill", "restored", "KILL"], ["delete", "-f", "restored"], ["--version"]):
        assert call("--root", str(root), *verb) == "runtime", verb


def test_a_config_that_names_the_runtime_twice_is_refused_and_never_splits_the_runtime(door, tmp_path, monkeypatch):
    """JSON readers disagree on a repeated key: the sh door reads the first, json keeps the last.
    The engine refuses the file (doctor says so) and its cold start runs what the door runs."""
    call, annotated, plain, _ = door
    config = tmp_path / "config.json"
    first = json.loads(config.read_text())["runtime"]
    config.write_text('{"runtime": "%s", "store": "/s", "runtime": "/usr/bin/false"}' % first)
    assert call("create", "--bundle", str(plain), "c1") == "runtime"
    monkeypatch.setenv("REWARM_CONFIG", str(config))
    with pytest.raises(SettingsError, match="'runtime' is given more than once"):
        settings_file.load()
    settings, error = create._settings()
    assert settings.runtime == first and error and "more than once" in error
    assert doctor._config(settings)[0][0] == "FAIL"


def _python_routes_to_engine(argv: list[str], cwd: str) -> bool:
    """What the Python side decides for argv (dispatch.route's decision, without its exec)."""
    from runtime.front import dispatch
    call = runc_argv.parse(argv)
    if call.verb not in ("create", "run") or not call.container_id:
        return False
    bundle = call.bundle if os.path.isabs(call.bundle) else os.path.join(cwd, call.bundle)
    return any(k.startswith("rewarm.dev/") for k in dispatch.annotations_of(bundle))


GLOBALS = [[], ["--debug"], ["--root", "/r"], ["--root=/r"], ["-root", "/r"], ["--log", "/l", "--log-format", "json"],
           ["--systemd-cgroup", "--criu", "/c"], ["--rootless", "auto"], ["-log", "/l"]]


def _corpus(annotated: str, plain: str) -> list[list[str]]:
    out = []
    for g in GLOBALS:
        for verb in ("create", "run"):
            for bundle in (annotated, plain):
                for spelled in (["--bundle", bundle], [f"--bundle={bundle}"], ["-b", bundle], [f"-b={bundle}"],
                                ["-bundle", bundle]):
                    for extra in ([], ["--pid-file", "/p"], ["--console-socket", "/s", "--no-pivot"],
                                  ["--preserve-fds", "1", "--no-new-keyring"], ["-pid-file", "/p"]):
                        out.append([*g, verb, *spelled, *extra, "c1"])
                        out.append([*g, verb, "c1", *spelled, *extra])          # flags after the id
        for verb in ("start", "state", "kill", "delete", "exec", "checkpoint", "restore", "ps", "events",
                     "pause", "resume", "update", "list", "spec", "features", "--version", "--help"):
            out.append([*g, verb, "c1"])
    return out


def test_the_sh_door_and_the_python_engine_route_every_runc_call_alike(door, tmp_path):
    """Every verb of runc's CLI with global and verb flags in each spelling runc accepts (--f v,
    --f=v, -f v, -f=v), flags before and after the id: the sh front door and the Python side send
    the same calls to the engine, so no call can be routed one way by one and another by the other."""
    call, annotated, plain, _ = door
    disagree = []
    for argv in _corpus(str(annotated), str(plain)):
        by_sh = call(*argv, cwd=str(tmp_path)) == "rewarm-runc-engine"
        if by_sh != _python_routes_to_engine(argv, str(tmp_path)):
            disagree.append((" ".join(argv), "sh: engine" if by_sh else "sh: runtime"))
    assert disagree == []


def test_the_sh_door_names_exactly_the_value_flags_of_the_python_tables():
    """One table: runc_argv's. The sh door's case lists are held to it."""
    import re
    script = open(rewarm_runc()).read()

    def listed(marker: str) -> set[str]:
        (line,) = [x for x in script.splitlines() if x.rstrip().endswith("# " + marker)]
        return set(re.findall(r"-{1,2}[a-z-]+", line.split(")")[0]))
    assert listed("GLOBAL_VALUE_FLAGS") | {"--root"} == runc_argv.GLOBAL_VALUE_FLAGS
    assert listed("VERB_VALUE_FLAGS") | {"--bundle", "-b"} == runc_argv.VERB_VALUE_FLAGS["create"] \
        == runc_argv.VERB_VALUE_FLAGS["run"]
