"""Every way a restore can be impossible ends in a clean cold start (or a clear refusal with
rewarm.dev/fallback: fail), with the reason in the runtime log and the event log."""
from __future__ import annotations

import io
import os
import tarfile

import pytest

from helpers import captured_source, clone_entry, events, reseal, rewarm_cli
from runtime.snapshot import store
from runtime.model import layout


@pytest.fixture(scope="module")
def good(node, tmp_path_factory):
    yield from captured_source(node, str(tmp_path_factory.mktemp("fallback-source")), "good")


def assert_cold_start(c, good, reason: str):
    assert c.create_rc == 0, c.runtime_log()
    answer, _ = c.wait_ready()
    assert answer["boot_id"] != good["answer"]["boot_id"]  # a fresh process, not the snapshot
    assert answer["served"] == 1
    assert "cold start" in c.runtime_log() and reason in c.runtime_log(), c.runtime_log()
    assert "cold start: " in c.text()  # one line in the pod's log says why
    return answer


def tar_with(members: list[tuple[tarfile.TarInfo, bytes | None]]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for info, data in members:
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return buf.getvalue()


def file_member(name: str, data: bytes) -> tuple[tarfile.TarInfo, bytes]:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    return info, data


def link_member(name: str, target: str, kind: bytes = tarfile.SYMTYPE) -> tuple[tarfile.TarInfo, None]:
    """A member without content: a symlink, a hard link, or (with CHRTYPE) a device node."""
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = target
    return info, None


def test_no_snapshot_means_a_cold_start(lab, good, node):
    c = lab.create("nosnap", lab.worker({"rewarm.dev/snapshot": "never-captured"}))
    assert_cold_start(c, good, "no snapshot default/never-captured")
    assert events(node, "cold-start")[-1]["container"] == c.cid


def test_different_args_mean_a_cold_start(lab, good):
    w = lab.worker({"rewarm.dev/snapshot": "good"}, args=["/usr/bin/python3", "-u", "/app/worker.py"])
    c = lab.create("args", w)
    assert_cold_start(c, good, "args: snapshot has")


def test_different_image_means_a_cold_start(lab, good):
    c = lab.create("image", lab.worker({"rewarm.dev/snapshot": "good", "io.kubernetes.cri.image-name": "other:2"}))
    assert_cold_start(c, good, "image: snapshot has ''")


def test_different_environment_means_a_cold_start(lab, good):
    c = lab.create("env", lab.worker({"rewarm.dev/snapshot": "good"}, env={"MODEL": "other"}))
    assert_cold_start(c, good, "environment differs in MODEL")


def test_a_flipped_byte_in_a_criu_image_means_a_cold_start(lab, good, node):
    path = clone_entry(node, good["entry"], "flipped")
    pages = os.path.join(path, layout.CHECKPOINT_DIR, "pages-1.img")
    with open(pages, "r+b") as f:
        f.seek(4096)
        byte = f.read(1)
        f.seek(4096)
        f.write(bytes([byte[0] ^ 0xFF]))
    c = lab.create("flip", lab.worker({"rewarm.dev/snapshot": "flipped"}))
    assert_cold_start(c, good, "checksum mismatch in checkpoint/pages-1.img")


def test_a_truncated_rootfs_diff_means_a_cold_start(lab, good, node):
    path = clone_entry(node, good["entry"], "truncated")
    tar_path = os.path.join(path, layout.ROOTFS_DIFF)
    os.truncate(tar_path, os.path.getsize(tar_path) // 2)
    c = lab.create("trunc", lab.worker({"rewarm.dev/snapshot": "truncated"}))
    assert_cold_start(c, good, "rootfs-diff.tar has")


def test_a_path_like_snapshot_name_is_refused_and_cold_started(lab, good, node):
    c = lab.create("traversal", lab.worker({"rewarm.dev/snapshot": "../../etc"}))
    assert_cold_start(c, good, "invalid snapshot name '../../etc'")
    assert not os.path.exists(os.path.join(node.store, "etc"))


def test_an_unknown_annotation_value_is_refused_and_cold_started(lab, good):
    c = lab.create("badcap", lab.worker({"rewarm.dev/snapshot": "good", "rewarm.dev/capture": "sometimes"}))
    assert_cold_start(c, good, "invalid rewarm.dev/capture: 'sometimes'")


@pytest.mark.parametrize("asks, extra_args, reason", [
    ({}, [], "rewarm.dev/engine: sglang needs --enable-memory-saver on the engine's command line"),
    ({"rewarm.dev/sleep-level": "2"}, ["--enable-memory-saver"], "rewarm.dev/engine: sglang takes no rewarm.dev/sleep-level"),
])
def test_what_the_sglang_preset_cannot_do_is_a_cold_start_that_says_why(lab, good, node, asks, extra_args, reason):
    w = lab.worker({"rewarm.dev/snapshot": "good", "rewarm.dev/engine": "sglang", **asks},
                   args=["/usr/bin/python3", "/app/worker.py", "--model-path", "/models/m", *extra_args])
    c = lab.create("sglang-preset", w)
    assert_cold_start(c, good, reason)
    assert reason in events(node, "cold-start")[-1]["reason"]


@pytest.mark.parametrize("case, members, reason", [
    ("absolute", [file_member("/tmp/rewarm-escape", b"x")], "is not a relative path"),
    ("dotdot", [file_member("../../../../tmp/rewarm-escape", b"x")], "climbs out with '..'"),
    ("symlink", [link_member("esc", "/tmp"), file_member("esc/rewarm-escape", b"x")], "written through symlink 'esc'"),
    ("hardlink", [link_member("passwd", "/etc/passwd", tarfile.LNKTYPE)], "is not a relative path"),
    ("device", [link_member("dev/evil", "", tarfile.CHRTYPE)], "unsupported type"),
])
def test_a_rootfs_diff_that_escapes_the_rootfs_is_refused(lab, good, node, case, members, reason):
    name = f"escape-{case}"
    path = clone_entry(node, good["entry"], name)
    with open(os.path.join(path, layout.ROOTFS_DIFF), "wb") as f:
        f.write(tar_with([file_member("harmless.txt", b"first"), *members]))
    reseal(path)  # the checksums agree: only the content is hostile
    c = lab.create(f"esc-{case}", lab.worker({"rewarm.dev/snapshot": name}))
    assert_cold_start(c, good, reason)
    assert not os.path.exists("/tmp/rewarm-escape")
    assert not os.path.exists(os.path.join(c.bundle.rootfs, "harmless.txt"))  # nothing half-laid


def test_a_failing_criu_restore_is_undone_and_cold_started(lab, good, node):
    path = clone_entry(node, good["entry"], "criu-fails")
    os.unlink(os.path.join(path, layout.CHECKPOINT_DIR, "pstree.img"))
    with open(os.path.join(path, layout.ROOTFS_DIFF), "wb") as f:
        f.write(tar_with([file_member("only-in-snapshot.txt", b"from the snapshot")]))
    reseal(path)
    c = lab.create("criufail", lab.worker({"rewarm.dev/snapshot": "criu-fails"}))
    assert_cold_start(c, good, "restore failed")
    assert not os.path.exists(os.path.join(c.bundle.rootfs, "only-in-snapshot.txt"))  # the diff was undone
    assert not os.path.exists(os.path.join(c.bundle.upper, "only-in-snapshot.txt"))


def test_fallback_fail_refuses_to_start_with_the_reason(lab, good, node):
    c = lab.create("mustrestore", lab.worker({"rewarm.dev/snapshot": "never-captured", "rewarm.dev/fallback": "fail"}),
                   start=False)
    assert c.create_rc != 0
    assert "not started (rewarm.dev/fallback: fail)" in c.runtime_log()
    assert '"level": "error"' in c.runtime_log()
    assert c.state() == {}  # no container was left behind
    assert events(node, "restore-refused")[-1]["container"] == c.cid


def test_a_store_entry_without_manifest_is_reported_listed_and_collected_as_broken(lab, good, node):
    path = clone_entry(node, good["entry"], "half-written")
    os.unlink(os.path.join(path, layout.MANIFEST))
    assert store.Store(node.store).entries("default", "half-written") == []
    c = lab.create("halfw", lab.worker({"rewarm.dev/snapshot": "half-written"}))
    assert_cold_start(c, good, f"snapshot default/half-written: entry {os.path.basename(path)} is broken: ")
    assert "has no valid manifest" in c.runtime_log()
    listing = rewarm_cli("ls").stdout
    assert "half-written" in listing and "BROKEN" in listing, listing
    assert path in rewarm_cli("gc", "--max-bytes", str(1 << 50)).stdout
    assert not os.path.exists(path)
