"""The hot path of rewarm-runc: argv read as runc reads it, and the sh front door, the one router,
sending only rewarm's containers to the engine, which takes nothing else (probes stand in for the
engine and the runtime where only the routing is under test; the system tests use the real parts)."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest

from runtime.host import settings_file
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


@pytest.mark.parametrize("argv", [["--version"], ["start", "c1"], ["--root", "/r", "delete", "-f", "c1"], ["create"]])
def test_the_engine_takes_only_the_calls_the_door_sends_it(argv):
    """No second router: a call rewarm-runc would not send is refused, before anything heavy loads."""
    code = ("import sys; sys.argv=['rewarm-runc-engine', *sys.argv[1:]]; import runtime.engine.runc_entry as e\n"
            "try:\n    e.main()\nexcept SystemExit as x:\n"
            "    print(x.code, sorted(m for m in sys.modules if m.startswith(('runtime', 'json', 'jsonschema', "
            "'pynvml', 'psutil', 'grpc'))))")
    out = subprocess.run([sys.executable, "-c", code, *argv], capture_output=True, text=True, check=True)
    assert out.stdout.split()[0] == "2" and "call rewarm-runc" in out.stderr
    assert out.stdout.split("'")[1::2] == ["runtime", "runtime.engine", "runtime.engine.runc_entry", "runtime.front",
                                           "runtime.front.runc_argv"]


def test_a_create_that_mentions_rewarm_only_in_a_value_reaches_the_engine_and_runs_as_runc(door, tmp_path):
    """The door matches a line, the engine reads the annotations: not rewarm's, so it is the real
    runtime's own create, with the same argv."""
    call, *_ = door
    bundle = tmp_path / "mentions"
    bundle.mkdir()
    (bundle / "config.json").write_text(json.dumps({"ociVersion": "1.0.2", "process": {"args": ["rewarm.dev/x"]}}))
    assert call("create", "--bundle", str(bundle), "c1") == "rewarm-runc-engine"      # the probe: routed
    engine = os.path.join(os.path.dirname(sys.executable), "rewarm-runc-engine")
    out = subprocess.run([engine, "create", "--bundle", str(bundle), "c1"], capture_output=True, text=True,
                         env={**os.environ, "REWARM_CONFIG": str(tmp_path / "config.json")})
    assert out.stdout.split() == ["runtime", "create", "--bundle", str(bundle), "c1"], out.stderr


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


def _rewarms_call(argv: list[str], cwd: str) -> bool:
    """Whether argv, read as runc reads it (runc_argv, the one flag table), creates a container whose
    config.json has rewarm.dev/ annotations."""
    call = runc_argv.parse(argv)
    if call.verb not in ("create", "run") or not call.container_id:
        return False
    bundle = call.bundle if os.path.isabs(call.bundle) else os.path.join(cwd, call.bundle)
    with open(os.path.join(bundle, "config.json")) as f:
        return any(k.startswith("rewarm.dev/") for k in json.load(f).get("annotations", {}))


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


def test_the_sh_door_routes_every_runc_call_as_runc_reads_it(door, tmp_path):
    """Every verb of runc's CLI with global and verb flags in each spelling runc accepts (--f v,
    --f=v, -f v, -f=v), flags before and after the id: the sh front door, the only router, sends to
    the engine exactly the creates of rewarm's containers, as runc_argv's table reads the argv."""
    call, annotated, plain, _ = door
    disagree = []
    for argv in _corpus(str(annotated), str(plain)):
        by_sh = call(*argv, cwd=str(tmp_path)) == "rewarm-runc-engine"
        if by_sh != _rewarms_call(argv, str(tmp_path)):
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
