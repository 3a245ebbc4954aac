"""Fault injection: every failure of a restore or a capture ends clean.

Each case drives real runc and CRIU through rewarm-runc or `rewarm capture` and kills a process
(CRIU, runc, the engine), fills a disk, or plants a hostile entry or archive, then asserts the end
state a user needs: a running container (cold-started) or a clear refusal, the reason in the
runtime log and the event log, and nothing left behind: no process, mount, cgroup, work dir,
staging dir or orphan entry.
"""
from __future__ import annotations

import contextlib
import dataclasses
import gzip
import io
import os
import shutil
import subprocess
import tarfile
import threading
import time
from typing import Callable

import psutil
import pytest

from helpers import captured_source, clone_entry, events, reseal, rewarm_cli, spec_of, stray_processes, survivors
from runtime.container import cgroups, mounts
from runtime.snapshot import store
from runtime.host.files import read_json, write_json
from runtime.engine import capture
from runtime.engine.archives import import_archive
from runtime.lab.runc_lab import Container
from runtime.model import layout
from runtime.model.errors import ArchiveError, CaptureFailed, SnapshotDamaged

BIG = {"BALLAST_MB": "1500"}          # a restore of ~1.5 GB takes seconds here: time to kill something


# --- helpers ------------------------------------------------------------------------------------
def leftovers(c: Container) -> list[str]:
    """What a container deleted with `delete --force` left behind."""
    found = [f"cgroup {d}" for d in cgroups.container_dirs(spec_of(c))]
    work = layout.work_dir(c.lab.runc_root, c.cid)
    found += [f"mount {m}" for m in mounts.under(work)] + ([f"work dir {work}"] if os.path.exists(work) else [])
    found += [f"mount {m}" for m in mounts.points() if ".criu.cgyard" in m]
    found += [f"runc state {c.cid}"] if os.path.exists(os.path.join(c.lab.runc_root, c.cid)) else []
    return found


def restored_tasks_exist(cid: str) -> bool:
    """CRIU has created the restored process tree (now filling its memory). runc puts CRIU itself
    into the container's cgroup before it sends the request: a task of our PID namespace there is
    CRIU, not the tree (killed then, CRIU would have written no log yet)."""
    procs = f"/sys/fs/cgroup/pids/rewarm-lab/{cid}/cgroup.procs"
    if not os.path.exists(procs):
        return False
    ours = os.readlink("/proc/self/ns/pid")
    tree = []
    for pid in open(procs).read().split():
        with contextlib.suppress(OSError):
            if os.readlink(f"/proc/{pid}/ns/pid") != ours:
                tree.append(pid)
    return bool(tree)


def memory_half_filled(cid: str) -> bool:
    """CRIU is filling the restored tree's memory: between a tenth and two thirds of the ballast is in
    (a point inside the fill however fast it runs, where a fixed delay can come after its end)."""
    procs = f"/sys/fs/cgroup/pids/rewarm-lab/{cid}/cgroup.procs"
    if not os.path.exists(procs):
        return False
    resident = 0
    for pid in open(procs).read().split():
        with contextlib.suppress(OSError, ValueError, IndexError):
            resident += int(open(f"/proc/{pid}/statm").read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    ballast = int(BIG["BALLAST_MB"]) << 20
    return ballast // 10 < resident < ballast * 2 // 3


class Killer(threading.Thread):
    killed_at = 0.0   # time.monotonic() of the kill


def kill_during(cid: str, what: str, delay: float, when: Callable[[str], bool] = lambda _: True) -> Killer:
    """Kill -9 `what` ("criu", "runc" or "engine") of the restore or checkpoint of container `cid`,
    `delay` seconds after CRIU started working on it and `when` holds. CRIU is runc's `criu swrk`
    (renamed `criu: restore --rpc`) in our PID namespace, not the restored init it forks, which
    carries the same name in a namespace of its own."""
    ours = os.readlink("/proc/self/ns/pid")

    def find() -> dict[str, psutil.Process] | None:
        for p in psutil.process_iter(["cmdline"]):
            cmd = p.info["cmdline"] or []
            if cmd and cmd[-1] == cid and ("restore" in cmd or "checkpoint" in cmd):
                criu = next((ch for ch in p.children(recursive=True) if ch.name() == "criu"
                             and any("swrk" in a or "rpc" in a for a in ch.cmdline())   # not `criu check`
                             and os.readlink(f"/proc/{ch.pid}/ns/pid") == ours), None)
                if criu is not None:
                    return {"runc": p, "criu": criu, "engine": p.parent()}
        return None

    def run() -> None:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            with contextlib.suppress(psutil.Error):   # processes come and go while we look
                with_criu = find()
                if with_criu and when(cid):
                    time.sleep(delay)
                    with_criu[what].kill()
                    t.killed_at = time.monotonic()
                    return
            time.sleep(0.005)
    t = Killer(target=run, daemon=True)
    t.start()
    return t


@pytest.fixture(scope="module")
def big(node, tmp_path_factory):
    """A worker holding 1.5 GB, captured (its source is gone: restores may reuse its pids)."""
    yield from captured_source(node, str(tmp_path_factory.mktemp("big-source")), "big", env=BIG, ready_s=120)


def assert_clean_cold_start(c: Container, big: dict, node, reason: str) -> None:
    assert c.create_rc == 0, c.runtime_log()
    answer, _ = c.wait_ready(timeout=120)
    assert answer["boot_id"] != big["answer"]["boot_id"]       # a fresh process, not a half-restored one
    assert stray_processes(c) == []                            # nothing else in its cgroups
    assert [m for m in mounts.points() if ".criu.cgyard" in m] == []
    assert not os.path.exists(layout.work_dir(c.lab.runc_root, c.cid))
    cold = [e for e in events(node, "cold-start") if e["container"] == c.cid]
    assert cold and reason in cold[0]["reason"], cold
    assert reason in c.runtime_log()


# --- kill -9 during a restore -----------------------------------------------------------------------
@pytest.mark.parametrize("victim, when, delay", [
    ("criu", "early", 0.1), ("criu", "tasks", 0.0), ("criu", "tasks", 0.3), ("criu", "filling", 0.0),
    ("runc", "tasks", 0.2)])
def test_kill_9_during_a_restore_ends_in_a_clean_cold_start(lab, big, node, victim, when, delay):
    """At several points: before CRIU forked the tree, once its tasks exist, and while it fills
    their memory. The cold start begins within 5 s of the kill, and after `delete -f` nothing of
    the half-restored tree is left in any PID namespace or cgroup hierarchy."""
    name = f"kill-{victim}-{when}-{int(delay * 10)}"
    killer = kill_during(f"{name}-{lab.tag}", victim, delay=delay,
                         when={"tasks": restored_tasks_exist, "filling": memory_half_filled}.get(when, lambda _: True))
    c = lab.create(name, lab.worker({"rewarm.dev/snapshot": "big"}, env=BIG))
    done = time.monotonic()
    killer.join()
    assert killer.killed_at and done - killer.killed_at < 5.0, done - killer.killed_at
    assert_clean_cold_start(c, big, node, "restore failed")
    c.runtime_cmd("delete", "--force", c.cid)
    assert survivors(c) == []
    if victim == "criu":    # CRIU's own log is kept and named, and the cause quoted is not a side note
        reason = [e for e in events(node, "cold-start") if e["container"] == c.cid][0]["reason"]
        assert "CRIU's log: " in reason, reason
        kept = reason.split("CRIU's log: ")[1]
        assert os.path.exists(kept) and kept.startswith(os.path.join(node.store, "logs", "restore-"))
        assert "RLIMIT_NOFILE" not in reason.split("CRIU's log")[0]


def test_kill_9_of_the_engine_during_a_restore_is_cleaned_by_the_callers_delete(lab, big, node):
    cid = f"kill-engine-{lab.tag}"
    killer = kill_during(cid, "engine", delay=0.2, when=restored_tasks_exist)
    c = lab.create("kill-engine", lab.worker({"rewarm.dev/snapshot": "big"}, env=BIG), start=False)
    killer.join()
    assert c.create_rc == -9            # the caller (containerd's shim) sees its create fail ...
    while any(cid in " ".join(p.info["cmdline"] or []) and "restore" in (p.info["cmdline"] or [])
              for p in psutil.process_iter(["cmdline"])):
        time.sleep(0.1)                 # (the orphaned runc restore runs to its end)
    c.runtime_cmd("delete", "--force", c.cid)   # ... and deletes what it may have left, as it does
    assert leftovers(c) == []
    again = lab.create("after-engine-kill", lab.worker({"rewarm.dev/snapshot": "big"}, env=BIG))
    assert again.get(timeout=30)["boot_id"] == big["answer"]["boot_id"]    # the entry still restores


# --- hostile rootfs diffs and a full disk while laying one ----------------------------------------
def diff_of(members: list[tuple[str, bytes | None, int]]) -> bytes:
    """A tar of (name, content or None for a directory, mode)."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name, data, mode in members:
            info = tarfile.TarInfo(name)
            info.mode = mode
            if data is None:
                info.type = tarfile.DIRTYPE
            else:
                info.size = len(data)
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return buf.getvalue()


def planted(node, big: dict, name: str, diff: bytes | None = None, deleted: list[str] | None = None,
            break_criu: bool = False) -> str:
    path = clone_entry(node, big["entry"], name)
    if diff is not None:
        with open(os.path.join(path, layout.ROOTFS_DIFF), "wb") as f:
            f.write(diff)
    if deleted is not None:
        write_json(os.path.join(path, layout.DELETED_FILES), deleted)
    if break_criu:
        os.unlink(os.path.join(path, layout.CHECKPOINT_DIR, "pstree.img"))
    reseal(path)    # checksums agree: only the content is hostile
    return path


def test_a_diff_that_deletes_the_rootfs_itself_is_refused_and_the_cold_start_works(lab, big, node):
    planted(node, big, "delete-root", deleted=["."])
    c = lab.create("delroot", lab.worker({"rewarm.dev/snapshot": "delete-root"}, env=BIG))
    assert_clean_cold_start(c, big, node, "names the root filesystem itself")
    assert os.path.exists(os.path.join(c.bundle.rootfs, "usr"))


def test_a_diff_that_chmods_directories_is_undone_when_the_restore_fails(lab, big, node):
    planted(node, big, "chmod-dirs", diff=diff_of([("etc", None, 0o000), ("tmp", None, 0o000)]), break_criu=True)
    c = lab.create("chmod", lab.worker({"rewarm.dev/snapshot": "chmod-dirs"}, env=BIG))
    assert_clean_cold_start(c, big, node, "restore failed")
    assert os.stat(os.path.join(c.bundle.rootfs, "etc")).st_mode & 0o777 == 0o755
    assert os.stat(os.path.join(c.bundle.rootfs, "tmp")).st_mode & 0o7777 == 0o1777


def test_a_full_disk_while_the_diff_is_laid_is_undone_and_cold_starts(lab, big, node):
    planted(node, big, "too-big", diff=diff_of([("var/cache/huge.bin", os.urandom(24 << 20), 0o644)]))
    worker = lab.worker({"rewarm.dev/snapshot": "too-big"}, env=BIG)
    worker.upper_limit_mb = 16
    c = lab.create("fulldisk", worker)
    assert_clean_cold_start(c, big, node, "rootfs diff could not be laid")
    assert "No space left on device" in c.runtime_log()
    assert not os.path.exists(os.path.join(c.bundle.upper, "var", "cache", "huge.bin"))


# --- hostile or broken entries --------------------------------------------------------------------
def test_a_namespace_that_climbs_out_of_the_store_is_refused(lab, big, node, tmp_path):
    for ns in ("../../evil", str(tmp_path / "abs")):
        c = lab.create("badns", lab.worker({"rewarm.dev/snapshot": "big",
                                            "io.kubernetes.cri.sandbox-namespace": ns}, env=BIG))
        assert_clean_cold_start(c, big, node, "invalid namespace")
        c.destroy()
        lab.containers.remove(c)
    assert not os.path.exists(tmp_path / "abs") and not os.path.exists(os.path.join(node.store, "..", "evil"))


def test_an_entry_filed_under_another_name_is_broken_not_restored(lab, big, node):
    path = clone_entry(node, big["entry"], "claims-other")
    meta = read_json(os.path.join(path, layout.MANIFEST))
    meta["name"] = "big"                               # says it is big, lies under claims-other
    write_json(os.path.join(path, layout.MANIFEST), meta)
    c = lab.create("claims", lab.worker({"rewarm.dev/snapshot": "claims-other"}, env=BIG))
    assert_clean_cold_start(c, big, node, "its manifest says default/big, but it lies under default/claims-other")


@pytest.mark.parametrize("change, reason", [
    ("owner", "only root may write snapshot files"),
    ("writable", "only root may write snapshot files"),
    ("symlink", "is not a plain file"),
])
def test_entries_with_foreign_owners_open_modes_or_symlinks_are_refused(lab, big, node, tmp_path, change, reason):
    path = clone_entry(node, big["entry"], f"perm-{change}")
    pages = os.path.join(path, layout.CHECKPOINT_DIR, "pages-1.img")
    if change == "owner":
        os.chown(pages, 1234, 1234)
    elif change == "writable":
        os.chmod(pages, 0o666)
    else:
        outside = tmp_path / "pages-outside.img"
        shutil.copy(pages, outside)
        os.chmod(outside, 0o666)
        os.unlink(pages)
        os.symlink(outside, pages)
    c = lab.create(f"perm-{change}", lab.worker({"rewarm.dev/snapshot": f"perm-{change}"}, env=BIG))
    assert_clean_cold_start(c, big, node, reason)


def test_an_opened_store_is_closed_again_and_said_so(lab, big, node):
    os.chmod(node.store, 0o755)
    c = lab.create("openstore", lab.worker({"rewarm.dev/snapshot": "big"}, env=BIG))
    assert c.get(timeout=30)["boot_id"] == big["answer"]["boot_id"]
    assert os.stat(node.store).st_mode & 0o777 == 0o700
    assert "was mode 0o755" in c.runtime_log() and "repaired to 0700" in c.runtime_log()


def test_an_edited_digest_in_the_manifest_is_not_covered_by_the_verified_record(big, node):
    path = clone_entry(node, big["entry"], "edited-digest")
    st = store.Store(node.store)
    entry = st.entries("default", "edited-digest")[0]
    store.verify(entry)                                 # checksummed once: the record says so
    with open(entry.file("checkpoint/pages-1.img"), "r+b") as f:
        f.seek(4096)
        byte = f.read(1)
        f.seek(4096)
        f.write(bytes([byte[0] ^ 1]))
    meta = read_json(os.path.join(path, layout.MANIFEST))
    meta["files"]["checkpoint/pages-1.img"]["sha256"] = store.sha256_file(entry.file("checkpoint/pages-1.img"))
    meta["files"]["checkpoint/inventory.img"]["sha256"] = "0" * 64    # an editor who got one wrong
    write_json(os.path.join(path, layout.MANIFEST), meta)
    with pytest.raises(SnapshotDamaged, match="checksum mismatch in checkpoint/inventory.img"):
        store.verify(st.entries("default", "edited-digest")[0])


def test_a_byte_changed_while_the_store_was_unmounted_is_found(big, node, tmp_path):
    """An ext4 image holds the store; a byte of a page image is changed in the image while it is
    not mounted, so the file keeps inode, size, mtime and ctime. The verified record must not hide it."""
    image, mnt = tmp_path / "store.ext4", tmp_path / "mnt"
    subprocess.run(["truncate", "-s", "4G", str(image)], check=True)
    subprocess.run(["mkfs.ext4", "-q", "-F", str(image)], check=True)
    mnt.mkdir()
    subprocess.run(["mount", "-o", "loop", str(image), str(mnt)], check=True)
    try:
        settings = dataclasses.replace(node, store=str(mnt / "store"))
        dest = store.Store(settings.store).ensure().name_dir("default", "big")
        os.makedirs(dest)
        shutil.copytree(big["entry"].path, os.path.join(dest, big["entry"].ident))
        entry = store.Store(settings.store).entries("default", "big")[0]
        store.verify(entry)                                   # full pass, record written
        store.verify(entry)                                   # skipped: nothing changed
        ino = os.stat(entry.file("checkpoint/pages-1.img")).st_ino
    finally:
        subprocess.run(["umount", str(mnt)], check=True)
    while subprocess.run(["losetup", "-j", str(image)], capture_output=True, text=True).stdout.strip():
        time.sleep(0.1)   # the loop device is gone, and with it every write it had in flight
    block = int(subprocess.run(["debugfs", "-R", f"bmap <{ino}> 1", str(image)], capture_output=True, text=True,
                               check=True).stdout.split()[0])
    with open(image, "r+b") as f:
        f.seek(block * 4096 + 17)
        byte = f.read(1)
        f.seek(block * 4096 + 17)
        f.write(bytes([byte[0] ^ 1]))
        f.flush()
        os.fsync(f.fileno())
    subprocess.run(["mount", "-o", "loop", str(image), str(mnt)], check=True)
    try:
        entry = store.Store(settings.store).entries("default", "big")[0]
        assert os.stat(entry.file("checkpoint/pages-1.img")).st_ino == ino
        with pytest.raises(SnapshotDamaged, match="checksum mismatch in checkpoint/pages-1.img"):
            store.verify(entry)
    finally:
        subprocess.run(["umount", str(mnt)], check=True)


# --- captures: a full disk, kill -9, one at a time -------------------------------------------------
@pytest.fixture
def small_store(node, tmp_path):
    path = tmp_path / "small-store"
    path.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=200m", "tmpfs", str(path)], check=True)
    yield dataclasses.replace(node, store=str(path / "store"))
    subprocess.run(["umount", "-l", str(path)], check=True)


def test_a_capture_that_cannot_fit_is_refused_before_the_dump_and_the_worker_serves_on(lab, node, small_store):
    src = lab.create("nofit", lab.worker({"rewarm.dev/snapshot": "nofit"}, env={"BALLAST_MB": "400"}))
    before, _ = src.wait_ready()
    with pytest.raises(CaptureFailed, match="not enough space in the store"):
        capture.capture(small_store, lab.runc_root, src.cid, "nofit", leave_running=False)
    assert src.get()["boot_id"] == before["boot_id"]
    assert [e for e in events(node, "capture-failed") if e["container"] == src.cid]


@pytest.mark.parametrize("leave_running", [True, False])
def test_a_disk_that_fills_up_after_the_dump_fails_the_capture_and_the_worker_survives(lab, node, small_store,
                                                                                      leave_running, tmp_path):
    """Another writer takes the rest of the disk the moment the dump is done: the capture runs the
    real runc through a wrapper that, after `runc checkpoint`, fills the store's filesystem (a
    thread watching for the images raced with the capture's next writes and could lose)."""
    src = lab.create("filled", lab.worker({"rewarm.dev/snapshot": "filled"}, env={"BALLAST_MB": "40"}))
    before, _ = src.wait_ready()
    filler = os.path.join(os.path.dirname(small_store.store), "filler")
    runc = tmp_path / "runc-then-fill"
    real = shutil.which(small_store.runtime) or small_store.runtime
    runc.write_text(f'#!/bin/sh\n"{real}" "$@"\nrc=$?\n'
                    f'case " $* " in *" checkpoint "*) dd if=/dev/zero of="{filler}" bs=1M 2>/dev/null ;; esac\n'
                    'exit $rc\n')
    runc.chmod(0o755)
    with pytest.raises(CaptureFailed, match="No space left on device"):
        capture.capture(dataclasses.replace(small_store, runtime=str(runc)), lab.runc_root, src.cid, "filled",
                        leave_running=leave_running)
    after = src.get()
    assert after["boot_id"] == before["boot_id"] and src.state()["status"] == "running"   # warm worker kept
    failed = [e for e in events(node, "capture-failed") if e["container"] == src.cid]
    assert failed and "No space left on device" in failed[-1]["reason"]
    os.unlink(filler)
    assert os.listdir(os.path.join(small_store.store, "tmp")) == []
    assert store.Store(small_store.store).everything() == ([], [])


@pytest.mark.parametrize("victim", ["criu", "runc"])
def test_kill_9_during_a_capture_fails_it_and_the_worker_serves_on(lab, node, victim):
    src = lab.create(f"ckill-{victim}", lab.worker({"rewarm.dev/snapshot": f"ckill-{victim}"}, env=BIG))
    before, _ = src.wait_ready(timeout=120)
    killer = kill_during(src.cid, victim, delay=0.3)
    with pytest.raises(CaptureFailed):
        capture.capture(node, lab.runc_root, src.cid, f"ckill-{victim}", leave_running=True)
    killer.join()
    assert src.get(timeout=30)["boot_id"] == before["boot_id"] and src.state()["status"] == "running"
    assert store.Store(node.store).entries("default", f"ckill-{victim}") == []
    assert [e for e in events(node, "capture-failed") if e["container"] == src.cid]


def test_a_second_capture_of_a_name_is_refused_with_an_event(lab, node):
    src = lab.create("twice", lab.worker({"rewarm.dev/snapshot": "busy-name"}))
    src.wait_ready()
    with store.Store(node.store).ensure().capturing("default", "busy-name"):
        out = rewarm_cli("capture", "--root", lab.runc_root, src.cid, "--name", "busy-name", "--leave-running")
    assert out.returncode == 1 and "already running" in out.stderr
    skipped = [e for e in events(node, "capture-skipped") if e["container"] == src.cid]
    assert skipped and "already running" in skipped[0]["reason"]


# --- archives ------------------------------------------------------------------------------------
def test_a_decompression_bomb_is_stopped_early(node, tmp_path):
    bomb = tmp_path / "bomb.tar.gz"
    with gzip.open(bomb, "wb", compresslevel=9) as gz, tarfile.open(fileobj=gz, mode="w") as tar:
        info = tarfile.TarInfo("checkpoint/pages-1.img")
        info.size = 1536 << 20

        class Zeros(io.RawIOBase):
            def readable(self) -> bool:
                return True

            def readinto(self, b):  # type: ignore[no-untyped-def]
                b[:] = bytes(len(b))
                return len(b)
        tar.addfile(info, io.BufferedReader(Zeros()))
    assert bomb.stat().st_size < 4 << 20
    with pytest.raises(ArchiveError, match="unpacks to more than"):
        import_archive(node, str(bomb), "bomb", "default")
    assert os.listdir(os.path.join(node.store, "tmp")) == []
    assert store.Store(node.store).entries("default", "bomb") == []


def test_an_archive_whose_diff_deletes_the_rootfs_is_refused_at_import(big, node, tmp_path):
    path = planted(node, big, "export-me", deleted=["."])
    archive = tmp_path / "hostile.tar"
    with tarfile.open(archive, "w") as tar:
        for item in os.listdir(path):
            tar.add(os.path.join(path, item), arcname=item)
    out = rewarm_cli("import", str(archive), "--name", "hostile")
    assert out.returncode == 1 and "names the root filesystem itself" in out.stderr
    assert store.Store(node.store).entries("default", "hostile") == []


# --- everything at once -------------------------------------------------------------------------
def test_restores_captures_removals_gc_and_imports_at_once_leave_a_consistent_store(lab, big, node, tmp_path):
    """Two restores, a recapture, an import, `rm` and `gc` of the same name race; whatever wins,
    each container runs (restored or cold), and the store holds only whole entries."""
    src = lab.create("race-src", lab.worker({"rewarm.dev/snapshot": "race"}))
    src.wait_ready()
    capture.capture(node, lab.runc_root, src.cid, "race", leave_running=True)
    archive = tmp_path / "race.tar"
    assert rewarm_cli("export", "race", str(archive)).returncode == 0
    results: dict[str, object] = {}

    def job(name, fn):  # type: ignore[no-untyped-def]
        try:
            results[name] = fn()
        except Exception as e:   # each outcome is checked below
            results[name] = e
    jobs = {
        "restore-1": lambda: lab.create("race-a", lab.worker({"rewarm.dev/snapshot": "race"})),
        "restore-2": lambda: lab.create("race-b", lab.worker({"rewarm.dev/snapshot": "race"})),
        "recapture": lambda: capture.capture(node, lab.runc_root, src.cid, "race", leave_running=True),
        "import": lambda: rewarm_cli("import", str(archive), "--name", "race"),
        "rm": lambda: rewarm_cli("rm", "race"),
        "gc": lambda: rewarm_cli("gc", "--max-bytes", "0"),
    }
    threads = [threading.Thread(target=job, args=item) for item in jobs.items()]
    for t in threads:
        t.start()
    for t in threads:
        t.join(300)
    for name in ("restore-1", "restore-2"):
        c = results[name]
        assert isinstance(c, Container) and c.create_rc == 0, results[name]
        assert c.wait_ready(timeout=60)[0]["served"] >= 1         # restored or cold: it runs
        assert stray_processes(c) == []
    entries, broken = store.Store(node.store).everything()
    assert broken == []
    assert all(os.path.exists(e.file(layout.MANIFEST)) for e in entries)
    store.Store(node.store).gc(max_bytes=1 << 50)
    assert os.listdir(os.path.join(node.store, "tmp")) == []
