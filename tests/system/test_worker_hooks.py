"""The worker's quiesce and resume hooks (rewarm.dev/quiesce-http, rewarm.dev/resume-http) around a
capture and after a restore, with the demo worker: its hooks drop and retake a 64 MiB ballast."""
from __future__ import annotations

import json
import os
import time

import pytest

from helpers import config_named, events, evict, rewarm_cli
from runtime.host import settings_file
from runtime.snapshot import page_cache
from runtime.lab.private_node import write_config
from runtime.engine import capture
from runtime.model.errors import CaptureFailed
from runtime.model.manifest import ReloadFile

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
    stages = events(node, "restored")[-1]["stages"]
    assert "resume" in stages
    # the whole create is accounted for: the runtime process's start before the engine's first step too
    assert stages["startup"] > 0 and stages["prepare"] > 0


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


def test_files_the_worker_reads_back_are_recorded_and_warmed_with_the_snapshot(lab, node, tmp_path):
    """The quiesce hook names the file its ballast comes from (as an LLM worker names its weights):
    the capture records it, `rewarm warm` and doctor count it, the restored copy reads it back, and
    once the file has changed a pod cold-starts without trying the restore."""
    data = tmp_path / "data"
    data.mkdir()
    os.chmod(tmp_path, 0o755)
    ballast = data / "ballast.bin"
    ballast.write_bytes(os.urandom(8 << 20))
    w = lab.worker(annotations("reads-back", **HOOKS), env={"BALLAST_FILE": "/data/ballast.bin"})
    w.binds["/data"] = str(data)
    source = lab.create("reads-back", w)
    before, _ = source.wait_ready()
    entry = capture.capture(node, lab.runc_root, source.cid, "reads-back", leave_running=True)
    assert entry.manifest.reload_files == (ReloadFile("/data/ballast.bin", str(ballast), 8 << 20),)
    assert events(node, "captured")[-1]["reload_bytes"] == 8 << 20

    evict(str(ballast))
    assert page_cache.resident_bytes(str(ballast)) < 1 << 20
    warmed = rewarm_cli("warm", "reads-back")     # $REWARM_CONFIG names the node fixture's config
    doctor = rewarm_cli("doctor")
    assert warmed.returncode == 0, warmed.stderr
    # all of it read in; under the suite's memory pressure the kernel may take a page or two back at once
    assert page_cache.resident_bytes(str(ballast)) >= (8 << 20) - (64 << 10)
    assert "0.01 GB its worker reads back, 100% in the page cache" in doctor.stdout, doctor.stdout

    w2 = lab.worker(annotations("reads-back", **HOOKS), env={"BALLAST_FILE": "/data/ballast.bin"})
    w2.binds["/data"] = str(data)
    restored = lab.create("reads-back-2", w2)
    answer = restored.get()
    assert answer["boot_id"] == before["boot_id"] and answer["ballast_bytes"] == 8 << 20

    ballast.write_bytes(os.urandom(4 << 20))      # the file changed on the node: no restore is tried
    w3 = lab.worker(annotations("reads-back", **HOOKS), env={"BALLAST_FILE": "/data/ballast.bin"})
    w3.binds["/data"] = str(data)
    fresh, _ = lab.create("reads-back-3", w3).wait_ready()
    assert fresh["boot_id"] != before["boot_id"] and fresh["ballast_bytes"] == 4 << 20
    reason = events(node, "cold-start")[-1]["reason"]
    assert "does not have as captured" in reason and "/data/ballast.bin" in reason, reason


def test_a_quiesce_answer_naming_a_file_that_escapes_its_mount_records_none_and_says_why(lab, node, tmp_path):
    """A link in the mounted dir that points out of it: the worker reads the container's file, and
    rewarm, which would follow it on the host, leaves it out."""
    data = tmp_path / "data"
    data.mkdir()
    os.chmod(tmp_path, 0o755)
    (data / "link").symlink_to("/usr/lib/os-release")
    w = lab.worker(annotations("reads-outside", **HOOKS), env={"BALLAST_FILE": "/data/link"})
    w.binds["/data"] = str(data)
    source = lab.create("reads-outside", w)
    source.wait_ready()
    entry = capture.capture(node, lab.runc_root, source.cid, "reads-outside", leave_running=True)
    assert entry.manifest.reload_files == ()
    left_out = events(node, "captured")[-1]["reload_files_left_out"]
    assert left_out == ["/data/link is not a regular file under a bind mount of the container"]


# --- hooks that trickle: deadlines by the wall clock ---------------------------------------------
TRICKLE_APP = os.path.join(os.path.dirname(os.path.abspath(__file__)), "workers", "trickle")
QUICK = {"rewarm.dev/quiesce-http": "http://127.0.0.1:8080/sleep", "rewarm.dev/resume-http": "http://127.0.0.1:8080/wake_up"}
TRICKLE = "http://127.0.0.1:8080/trickle"


def trickler(lab, name: str, **hooks: str):
    return lab.worker(annotations(name, **hooks), app_dir=TRICKLE_APP, env={"TRICKLE_GAP": "1"})


def test_a_quiesce_hook_that_trickles_is_cut_at_its_deadline_and_the_worker_serves_on(lab, tmp_path):
    path = write_config(str(tmp_path), hook_timeout_s=3, capture_timeout_s=60)
    with config_named(path):
        node = settings_file.load(path)
        source = lab.create("trq", trickler(lab, "trq", **{**QUICK, "rewarm.dev/quiesce-http": TRICKLE}))
        before, _ = source.wait_ready()
        t = time.monotonic()
        with pytest.raises(CaptureFailed, match=r"quiesce hook POST http://127.0.0.1:8080/trickle failed "
                                                r"\(no whole answer within 3s\)"):
            capture.capture(node, lab.runc_root, source.cid, "trq", leave_running=True)
        assert time.monotonic() - t < 10   # a byte a second would have held it for 12 days
        assert source.get()["boot_id"] == before["boot_id"]


def test_a_sequence_of_hook_calls_shares_one_deadline(lab, tmp_path):
    path = write_config(str(tmp_path), hook_timeout_s=3)
    with config_named(path):
        node = settings_file.load(path)
        sequence = json.dumps(["http://127.0.0.1:8080/sleep", TRICKLE, "http://127.0.0.1:8080/sleep"])
        source = lab.create("trs", trickler(lab, "trs", **{**QUICK, "rewarm.dev/quiesce-http": sequence}))
        source.wait_ready()
        with pytest.raises(CaptureFailed, match=r"\(call 2 of 3\) failed \(no whole answer within"):
            capture.capture(node, lab.runc_root, source.cid, "trs", leave_running=True)


def test_a_resume_hook_that_trickles_after_a_restore_ends_in_a_cold_start_within_restore_timeout(lab, tmp_path):
    path = write_config(str(tmp_path), restore_timeout_s=6, hook_timeout_s=60)
    with config_named(path):
        node = settings_file.load(path)
        source = lab.create("trr-src", trickler(lab, "trr", **QUICK))
        before, _ = source.wait_ready()
        capture.capture(node, lab.runc_root, source.cid, "trr", leave_running=False)
        t = time.monotonic()
        c = lab.create("trr", trickler(lab, "trr", **{**QUICK, "rewarm.dev/resume-http": TRICKLE}))
        assert c.create_rc == 0 and time.monotonic() - t < 15   # restore_timeout_s bounds the resume hook too
        answer, _ = c.wait_ready()
        assert answer["boot_id"] != before["boot_id"]
        assert "resume hook POST http://127.0.0.1:8080/trickle failed (no whole answer within" in \
            events(node, "cold-start")[-1]["reason"]


def test_a_restore_that_cannot_finish_within_create_timeout_s_cold_starts_within_it(lab, tmp_path):
    """kubelet abandons a create after its runtime-request-timeout: a restore slowed on purpose (its
    resume hook trickles, well inside restore_timeout_s and hook_timeout_s) gives up at the create's
    budget and the pod cold-starts inside it."""
    path = write_config(str(tmp_path), create_timeout_s=6, restore_timeout_s=300, hook_timeout_s=60)
    with config_named(path):
        node = settings_file.load(path)
        source = lab.create("budget-src", trickler(lab, "budget", **QUICK))
        before, _ = source.wait_ready()
        capture.capture(node, lab.runc_root, source.cid, "budget", leave_running=False)
        t = time.monotonic()
        c = lab.create("budget", trickler(lab, "budget", **{**QUICK, "rewarm.dev/resume-http": TRICKLE}))
        assert c.create_rc == 0 and time.monotonic() - t < 6 + 5
        assert c.wait_ready()[0]["boot_id"] != before["boot_id"]
        reason = events(node, "cold-start")[-1]["reason"]
        assert "resume hook POST http://127.0.0.1:8080/trickle failed (no whole answer within" in reason, reason
