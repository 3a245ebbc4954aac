"""Restore instead of start, through rewarm-runc on real runc + CRIU."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import time

import psutil
import pytest

from helpers import captured_source, events, rewarm_cli
from runtime.snapshot import store
from runtime.engine import capture
from runtime.model import layout

SNAPSHOT = {"rewarm.dev/snapshot": "warm"}


@pytest.fixture(scope="module")
def warm(node, tmp_path_factory):
    """A worker cold-started through rewarm-runc, warmed up, and captured as snapshot 'warm'."""
    yield from captured_source(node, str(tmp_path_factory.mktemp("source")), "warm", leave_running=True)


def cgroup_dirs(cid: str) -> list[str]:
    return [os.path.join(root, "rewarm-lab", cid) for root in
            ("/sys/fs/cgroup/memory", "/sys/fs/cgroup/pids", "/sys/fs/cgroup/unified", "/sys/fs/cgroup")
            if os.path.isdir(os.path.join(root, "rewarm-lab", cid))]


def test_restored_worker_answers_at_once_with_the_warm_state(lab, warm, node):
    c = lab.create("restored", lab.worker(SNAPSHOT))
    assert c.create_rc == 0, c.runtime_log()
    answer = c.get()  # one try: a restored worker is already listening
    assert answer is not None, c.text()
    assert answer["boot_id"] == warm["answer"]["boot_id"]        # the source's memory, not a new start
    assert answer["state"] == warm["answer"]["state"]
    assert answer["cache_file"] == warm["answer"]["state"]       # the rootfs diff was laid
    assert "restored" in c.runtime_log()
    assert events(node, "restored")[-1]["container"] == c.cid


def test_restored_worker_runs_in_the_new_containers_namespace_and_pipes(lab, warm):
    c = lab.create("piped", lab.worker(SNAPSHOT))
    state = c.state()
    assert state["status"] == "running"
    assert int(open(c.pid_file).read()) == state["pid"]
    assert c.get()["boot_id"] == warm["answer"]["boot_id"]
    assert c.wait_output("served request"), c.text()     # the restored process writes to B's stdout pipe
    assert "rewarm: restored from snapshot warm" in c.text()
    exec_out = c.runtime_cmd("exec", c.cid, "cat", "/var/cache/worker/state.json", check=True).stdout
    assert str(warm["answer"]["state"]["largest"]) in exec_out
    # The source container still serves in its own namespace: the two are independent.
    assert warm["source"].get()["boot_id"] == warm["answer"]["boot_id"]


def test_kill_and_delete_of_a_restored_container_leave_nothing_behind(lab, warm):
    c = lab.create("killed", lab.worker(SNAPSHOT))
    pid = c.state()["pid"]
    assert cgroup_dirs(c.cid)
    c.runtime_cmd("kill", c.cid, "KILL", check=True)
    deadline = time.monotonic() + 10
    while c.state().get("status") != "stopped" and time.monotonic() < deadline:
        time.sleep(0.05)
    c.runtime_cmd("delete", c.cid, check=True)
    assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    assert cgroup_dirs(c.cid) == []
    assert not os.path.exists(os.path.join(lab.runc_root, c.cid))
    with open("/proc/self/mountinfo") as f:
        mount_points = [line.split()[4] for line in f]
    ours = (c.bundle.rootfs, f"/run/netns/{c.netns}", f"/var/run/netns/{c.netns}")  # the lab made these
    assert [m for m in mount_points if c.cid in m and m not in ours] == []
    assert not os.path.exists(layout.work_dir(lab.runc_root, c.cid))
    assert c.runtime_cmd("state", c.cid).returncode != 0


def test_a_store_mounted_read_only_still_restores(lab, warm, node):
    """A node may mount its store read-only (a shared volume, snapshots baked into an image): a
    restore only reads it, so it restores; it does not cold-start on a lock file it cannot create."""
    subprocess.run(["mount", "--bind", node.store, node.store], check=True)
    try:
        subprocess.run(["mount", "-o", "remount,bind,ro", node.store], check=True)
        c = lab.create("read-only", lab.worker(SNAPSHOT))
        answer = c.get()
        c.runtime_cmd("delete", "--force", c.cid)
    finally:
        subprocess.run(["umount", node.store], check=True)
    assert c.create_rc == 0 and answer is not None, c.runtime_log()
    assert answer["boot_id"] == warm["answer"]["boot_id"], c.runtime_log()
    assert events(node, "restored")[-1]["container"] == c.cid


def test_start_after_restore_is_a_no_op_and_a_second_start_fails_like_runc(lab, warm):
    c = lab.create("twice", lab.worker(SNAPSHOT))
    assert c.state()["status"] == "running"
    again = c.runtime_cmd("start", c.cid)
    assert again.returncode != 0  # runc's own answer for a running container


def test_run_restores_too_detached_and_in_the_foreground(lab, warm):
    detached, proc = lab.run("run-d", lab.worker(SNAPSHOT), detach=True)
    assert proc.wait(120) == 0, detached.runtime_log()
    assert detached.get()["boot_id"] == warm["answer"]["boot_id"]
    foreground, proc = lab.run("run-fg", lab.worker(SNAPSHOT), detach=False)
    answer, _ = foreground.wait_ready(timeout=60)
    assert answer["boot_id"] == warm["answer"]["boot_id"] and proc.poll() is None   # runc stays attached
    deadline = time.monotonic() + 10   # the engine logs once runc says restored, the worker may answer first
    while "restored" not in foreground.runtime_log() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert "restored" in foreground.runtime_log()
    foreground.runtime_cmd("kill", foreground.cid, "KILL", check=True)
    assert proc.wait(30) == 137      # the container's end, passed on as runc reports it


def test_capture_without_leave_running_stops_the_source(lab, node):
    src = lab.create("stopme", lab.worker({"rewarm.dev/snapshot": "stopped-src"}))
    src.wait_ready()
    pid = src.state()["pid"]
    entry = capture.capture(node, lab.runc_root, src.cid, "stopped-src")
    assert entry.manifest.capture.leave_running is False
    assert src.state() == {}  # runc removes a container it checkpointed without --leave-running
    assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    b = lab.create("after-stop", lab.worker({"rewarm.dev/snapshot": "stopped-src"}))
    assert b.get() is not None and "restored" in b.runtime_log()


def test_kill_9_of_capture_leaves_no_usable_entry(lab, node):
    src = lab.create("big", lab.worker({"rewarm.dev/snapshot": "interrupted"}, env={"BALLAST_MB": "1500"}))
    src.wait_ready()
    proc = subprocess.Popen([os.path.join(os.path.dirname(os.sys.executable), "rewarm"), "capture", "--root",
                             lab.runc_root, src.cid, "--name", "interrupted", "--leave-running"])
    tmp = os.path.join(node.store, "tmp")
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:  # kill once CRIU is writing images into the staging dir
        if any(os.path.exists(os.path.join(tmp, d, "checkpoint", "pages-1.img")) for d in os.listdir(tmp)):
            break
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert store.Store(node.store).entries("default", "interrupted") == []
    b = lab.create("after-kill", lab.worker({"rewarm.dev/snapshot": "interrupted"}, env={"BALLAST_MB": "1500"}))
    assert b.create_rc == 0
    assert "cold start" in b.runtime_log()
    while any(src.cid in " ".join(p.info["cmdline"] or []) and "checkpoint" in (p.info["cmdline"] or [])
              for p in psutil.process_iter(["cmdline"])):
        time.sleep(0.1)  # the orphaned runc checkpoint still writes into the staging dir
    removed = store.Store(node.store).gc(max_bytes=1 << 50)
    assert any("/tmp/" in p for p in removed)
    assert os.listdir(tmp) == []


def test_the_operator_commands_list_inspect_and_remove_snapshots(lab, node, warm):
    src = lab.create("cli", lab.worker({"rewarm.dev/snapshot": "cli-snap"}))
    src.wait_ready()
    captured = rewarm_cli("capture", "--root", lab.runc_root, src.cid, "--name", "cli-snap", "--namespace", "team-a",
                        "--leave-running")
    assert captured.returncode == 0 and "captured team-a/cli-snap" in captured.stdout, captured.stderr
    listing = rewarm_cli("ls")
    assert "team-a" in listing.stdout and "cli-snap" in listing.stdout and "warm" in listing.stdout
    subprocess.run(["sync"], check=True)
    with open("/proc/sys/vm/drop_caches", "w") as f:
        f.write("1\n")                                     # the snapshot's files leave the page cache
    warmed = rewarm_cli("warm", "cli-snap", "--namespace", "team-a", "--threads", "4")
    assert warmed.returncode == 0 and "warmed team-a/cli-snap" in warmed.stdout, warmed.stderr
    assert "100% now" in warmed.stdout and "100% before" not in warmed.stdout, warmed.stdout
    assert "warm: 100% (" in warmed.stderr, warmed.stderr   # its progress, off a terminal a line a tenth
    doctor = rewarm_cli("doctor").stdout
    assert "snapshot team-a/cli-snap" in doctor and "100% in the page cache" in doctor, doctor
    inspected = json.loads(rewarm_cli("inspect", "cli-snap", "--namespace", "team-a").stdout)
    assert inspected[0]["manifest"]["source"]["container_id"] == src.cid
    assert rewarm_cli("capture", "--root", lab.runc_root, "no-such", "--name", "x").returncode == 1
    assert "invalid snapshot name" in rewarm_cli("capture", "--root", lab.runc_root, src.cid, "--name", "../x").stderr
    # A pod of another namespace does not see team-a's snapshot.
    other = lab.create("ns-b", lab.worker({"rewarm.dev/snapshot": "cli-snap"}))
    assert "no snapshot default/cli-snap" in other.runtime_log()
    assert rewarm_cli("rm", "cli-snap", "--namespace", "team-a").returncode == 0
    assert "cli-snap" not in rewarm_cli("ls").stdout
    assert rewarm_cli("inspect", "cli-snap", "--namespace", "team-a").returncode == 1
