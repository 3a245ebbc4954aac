"""The worker's quiesce and resume hooks (rewarm.dev/quiesce-http, rewarm.dev/resume-http) around a
capture and after a restore, with the demo worker: its hooks drop and retake a 64 MiB ballast."""
from __future__ import annotations

import pytest

from helpers import events
from runtime.engine import capture
from runtime.model.errors import CaptureFailed

BALLAST = {"BALLAST_MB": "64"}
HOOKS = {"rewarm.dev/quiesce-http": "http://127.0.0.1:8080/sleep", "rewarm.dev/resume-http": "http://127.0.0.1:8080/wake_up"}


def annotations(name: str, **extra: str) -> dict[str, str]:
    return {"rewarm.dev/snapshot": name, **extra}


def test_quiesced_capture_is_smaller_resumes_the_source_and_the_restored_copy(lab, node):
    plain = lab.create("plain", lab.worker(annotations("unquiesced"), env=BALLAST))
    plain.wait_ready()
    big = capture.capture(node, lab.runc_root, plain.cid, "unquiesced", leave_running=True)
    source = lab.create("hooked", lab.worker(annotations("quiesced", **HOOKS), env=BALLAST))
    before, _ = source.wait_ready()
    small = capture.capture(node, lab.runc_root, source.cid, "quiesced", leave_running=True)
    saved = big.manifest.capture.checkpoint_bytes - small.manifest.capture.checkpoint_bytes
    assert saved > 60 * 2**20, (big.manifest.capture, small.manifest.capture)
    after = source.get()
    assert after["ballast_bytes"] == 64 * 2**20 and after["wakes"] == before["wakes"] + 1   # resumed
    restored = lab.create("restored", lab.worker(annotations("quiesced", **HOOKS), env=BALLAST))
    answer = restored.get()
    assert answer["boot_id"] == before["boot_id"]
    assert answer["ballast_bytes"] == 64 * 2**20 and answer["wakes"] == before["wakes"] + 1   # resumed too
    assert "resume" in events(node, "restored")[-1]["stages"]


def test_a_failing_quiesce_hook_fails_the_capture_and_the_worker_keeps_serving(lab, node):
    source = lab.create("badq", lab.worker(annotations(
        "badq", **{**HOOKS, "rewarm.dev/quiesce-http": "http://127.0.0.1:8080/no-such-hook"}), env=BALLAST))
    before, _ = source.wait_ready()
    with pytest.raises(CaptureFailed, match="quiesce hook .* failed .*HTTP 404"):
        capture.capture(node, lab.runc_root, source.cid, "badq", leave_running=True)
    after = source.get()
    assert after["boot_id"] == before["boot_id"] and after["wakes"] == before["wakes"] + 1


def test_a_failing_resume_hook_after_restore_means_a_cold_start(lab, node):
    source = lab.create("badr-src", lab.worker(annotations("badr", **HOOKS), env=BALLAST))
    before, _ = source.wait_ready()
    capture.capture(node, lab.runc_root, source.cid, "badr", leave_running=True)
    broken = {**HOOKS, "rewarm.dev/resume-http": "http://127.0.0.1:8080/no-such-hook"}
    c = lab.create("badr", lab.worker(annotations("badr", **broken), env=BALLAST))
    answer, _ = c.wait_ready()
    assert answer["boot_id"] != before["boot_id"]
    assert "resume hook" in events(node, "cold-start")[-1]["reason"]
