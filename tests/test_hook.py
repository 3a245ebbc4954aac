"""thaw-hook reads the OCI state from stdin and fails clearly on bad input."""
import json
import os
import subprocess
import sys

HOOK = os.path.join(os.path.dirname(sys.executable), "thaw-hook")


def run_hook(stage: str, stdin: str) -> subprocess.CompletedProcess:
    return subprocess.run([HOOK, stage], input=stdin, capture_output=True, text=True)


def test_bad_state_on_stdin_gives_a_clear_error_and_exit_code():
    out = run_hook("prestart", "not json")
    assert out.returncode != 0 and "not JSON" in out.stderr
    out = run_hook("prestart", json.dumps({"pid": 1}))
    assert out.returncode != 0 and "lacks 'ociVersion' or 'id'" in out.stderr


def test_prestart_rejects_a_bad_annotation_value():
    state = {"ociVersion": "1.0.2", "id": "c1", "annotations": {"thaw.dev/snapshot": "ok", "thaw.dev/fallback": "maybe"}}
    out = run_hook("prestart", json.dumps(state))
    assert out.returncode != 0 and "invalid thaw.dev/fallback: 'maybe'" in out.stderr


def test_hooks_do_nothing_for_unannotated_containers():
    assert run_hook("poststop", json.dumps({"ociVersion": "1.0.2", "id": "c1"})).returncode == 0
    assert run_hook("bogus", "{}").returncode != 0
