"""The restore pipeline's steps against a fake runc at the adapter seam (the `runtime` setting): what
reaches the runtime, what is laid and undone, and that cheap checks run before any subprocess.

FakeRunc is a shell script standing in for runc at the one place rewarm calls it; it records its
argv and, for `restore`, succeeds or fails as the test says. The real runc + CRIU restore is
covered by the system tests."""
from __future__ import annotations

import io
import json
import os
import tarfile
from pathlib import Path

import pytest

from runtime.snapshot import store
from runtime.host.files import read_json, write_json
from runtime.engine import fingerprinting, restore, wanted
from runtime.front import runc_argv
from runtime.front.names import RESTORED_MARKER
from runtime.model import annotations as ann
from runtime.model import layout
from runtime.container.spec_file import SpecFile
from runtime.model.errors import NotRestorable, RestoreFailed
from runtime.model.manifest import Manifest
from runtime.model.settings import from_mapping

FAKE_RUNC = r"""#!/bin/bash
echo "$*" >> "$(dirname "$0")/calls.log"
root=/run/runc work= pidf= prev=
for a in "$@"; do case $prev in --root) root=$a ;; --work-path) work=$a ;; --pid-file) pidf=$a ;; esac; prev=$a; done
cid=${@: -1}
case " $* " in
  *" --version "*) echo "runc version 9.9 (FakeRunc)" ;;
  *" restore "*)
    echo "(00.01) Error (criu/cr-restore.c:1): FakeRunc says no" > "$work/restore.log"
    [ "$FAKE_RESTORE" = fail ] && exit 1
    mkdir -p "$root/$cid" && echo '{}' > "$root/$cid/state.json" && echo 4242 > "$pidf" ;;
  *" delete "*) rm -rf "${root:?}/$cid" ;;
  *" state "*) echo '{"pid": 4242, "status": "running"}' ;;
esac
"""
FAKE_CRIU = "#!/bin/sh\necho 'Version: 4.2.1'\n"


class World:
    def __init__(self, tmp: Path):
        self.bin, self.root, self.bundle = tmp / "bin", tmp / "runc-root", tmp / "bundle"
        for d in (self.bin, self.root, self.bundle / "rootfs" / "etc"):
            d.mkdir(parents=True)
        for name, text in (("runc", FAKE_RUNC), ("criu", FAKE_CRIU)):
            (self.bin / name).write_text(text)
            (self.bin / name).chmod(0o755)
        self.settings = from_mapping({"runtime": str(self.bin / "runc"), "criu": str(self.bin / "criu"),
                                      "store": str(tmp / "store"), "event_log": str(tmp / "events.jsonl"),
                                      "criu_plugin_dir": ""})
        self.spec = {"ociVersion": "1.0.2", "process": {"args": ["/w"], "cwd": "/", "env": []},
                     "root": {"path": "rootfs"}, "annotations": {ann.SNAPSHOT: "warm"}}
        write_json(str(self.bundle / "config.json"), self.spec, mode=0o644)
        self.call = runc_argv.parse(["--root", str(self.root), "create", "--bundle", str(self.bundle),
                                     "--pid-file", str(tmp / "pid"), "c1"])

    def calls(self) -> list[str]:
        log = self.bin / "calls.log"
        return log.read_text().splitlines() if log.exists() else []

    def capture(self, args: tuple[str, ...] = ("/w",)) -> store.Entry:
        st = store.Store(self.settings.store)
        spec = {**self.spec, "process": {**self.spec["process"], "args": list(args)}}
        with st.staging() as staging:
            os.makedirs(os.path.join(staging, layout.CHECKPOINT_DIR))
            for name in ("inventory.img", "pages-1.img"):
                Path(staging, layout.CHECKPOINT_DIR, name).write_bytes(os.urandom(64))
            buf = io.BytesIO()
            with tarfile.open(fileobj=buf, mode="w") as tar:
                info = tarfile.TarInfo("etc/from-snapshot")
                info.size = 5
                tar.addfile(info, io.BytesIO(b"hello"))
            Path(staging, layout.ROOTFS_DIFF).write_bytes(buf.getvalue())
            Path(staging, layout.DELETED_FILES).write_text("[]")
            fp = fingerprinting.of_container(spec, self.settings)
            return st.commit(staging, Manifest(namespace="default", name="warm", created="2026-11-29T00:00:00Z",
                                               fingerprint=fp, fingerprint_id=fp.ident(), source={"container_id": "s"}))

    def restore(self) -> restore.Result:
        self.spec_file = SpecFile(str(self.bundle))
        request = ann.parse(self.spec["annotations"], self.spec["process"])
        return restore.restore(self.call, self.settings, self.spec_file,
                               wanted.of(self.spec_file.spec, self.settings, request, "default"))


@pytest.fixture
def world(tmp_path: Path) -> World:
    return World(tmp_path)


def test_a_fitting_entry_is_restored_in_the_callers_place(world):
    entry = world.capture()
    result = world.restore()
    assert result.entry_ident == entry.ident
    assert {"find", "fingerprint", "verify", "rootfs", "runtime_restore"} <= set(result.stages)
    (restore_call,) = [c for c in world.calls() if " restore " in c]
    assert f"--root {world.root} " in restore_call and f"--bundle {world.bundle} " in restore_call
    assert " --detach " in restore_call and f"--pid-file {world.call.options['--pid-file']}" in restore_call
    assert restore_call.endswith(" c1")
    assert (world.bundle / "rootfs" / "etc" / "from-snapshot").read_text() == "hello"    # the diff was laid
    marker = read_json(str(world.root / "c1" / RESTORED_MARKER))                         # `start` will be a no-op
    assert marker["entry"] == entry.ident
    assert world.spec_file.writes == 0                 # nothing of rewarm's to add: config.json is not rewritten
    assert not os.path.exists(layout.work_dir(str(world.root), "c1"))


def test_a_failing_runtime_restore_is_undone_and_says_why(world, monkeypatch):
    world.capture()
    monkeypatch.setenv("FAKE_RESTORE", "fail")
    with pytest.raises(RestoreFailed, match="restore failed \\(exit 1\\).*CRIU: .*FakeRunc says no"):
        world.restore()
    assert not (world.bundle / "rootfs" / "etc" / "from-snapshot").exists()              # diff undone
    assert any(c.endswith("delete --force c1") for c in world.calls())                    # whatever ran is gone
    assert not os.path.exists(layout.work_dir(str(world.root), "c1"))


def test_no_entry_is_found_before_any_subprocess_runs(world):
    with pytest.raises(NotRestorable, match="no snapshot default/warm in the store yet"):
        world.restore()
    assert world.calls() == []      # not even `runc --version` for the fingerprint


def test_an_existing_container_is_never_touched(world):
    world.capture()
    before = world.calls()
    (world.root / "c1").mkdir()
    (world.root / "c1" / "state.json").write_text("{}")
    with pytest.raises(NotRestorable, match="a container c1 exists already"):
        world.restore()
    assert world.calls() == before and (world.root / "c1" / "state.json").exists()


def test_an_entry_of_other_args_does_not_fit_and_says_how(world):
    world.capture(args=("/w", "--other"))
    with pytest.raises(NotRestorable, match=r"does not fit this container: args: snapshot has \['/w', '--other'\]"):
        world.restore()
    assert not [c for c in world.calls() if " restore " in c]


def test_a_corrupt_page_image_is_refused_before_the_runtime_runs(world):
    entry = world.capture()
    with open(entry.file("checkpoint/pages-1.img"), "r+b") as f:
        f.write(b"X")
    os.unlink(entry.file(store.VERIFIED_FILE))
    with pytest.raises(NotRestorable, match="checksum mismatch in checkpoint/pages-1.img"):
        world.restore()
    assert not [c for c in world.calls() if " restore " in c]
    assert json.loads((world.bundle / "config.json").read_text())["annotations"] == {ann.SNAPSHOT: "warm"}
