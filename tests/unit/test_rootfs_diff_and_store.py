"""The rootfs diff and the store on a real filesystem (no runtime needed): containment, undo, atomicity,
locks, gc."""
from __future__ import annotations

import dataclasses
import io
import json
import os
import subprocess
import stat
import sys
import tarfile
from typing import Iterator

import pytest

from runtime.host import files
from runtime.snapshot import rootfs_diff, store, verified
from runtime.model import layout
from runtime.model.errors import SnapshotDamaged, StoreError, UnsafeRootfsDiff
from runtime.model.fingerprint import Fingerprint
from runtime.model.manifest import Manifest


def make_tar(path: str, files: dict[str, bytes]) -> None:
    with tarfile.open(path, "w") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


def test_secure_join_resolves_absolute_symlinks_inside_the_rootfs(tmp_path):
    root = tmp_path / "rootfs"
    (root / "usr" / "lib").mkdir(parents=True)
    os.symlink("/usr/lib", root / "lib")          # absolute: means rootfs/usr/lib, not the host's
    os.symlink("../../../../../..", root / "up")  # climbs at most to the rootfs
    assert rootfs_diff.secure_join(str(root), "lib/x.so") == str(root / "usr" / "lib" / "x.so")
    assert rootfs_diff.secure_join(str(root), "up/etc/passwd") == str(root / "etc" / "passwd")


def test_apply_lays_files_and_deletions_then_undo_restores_the_rootfs(tmp_path):
    root = tmp_path / "rootfs"
    (root / "etc").mkdir(parents=True)
    (root / "etc" / "keep").write_text("original")
    (root / "etc" / "gone").write_text("to be deleted")
    os.symlink("/etc", root / "cfg")
    tar_path, deleted = tmp_path / "diff.tar", tmp_path / "deleted.files"
    deleted.write_text('["etc/gone"]')
    (root / "etc" / "gone2").write_text("a file where the diff wants a directory")
    make_tar(str(tar_path), {"etc/keep": b"changed", "var/cache/x": b"x", "etc/gone2/y": b"x"})
    with pytest.raises(UnsafeRootfsDiff):  # etc/gone2 is a file: laying fails midway and is undone
        rootfs_diff.apply(str(root), str(tar_path), str(deleted), str(tmp_path / "backup0"))
    assert (root / "etc" / "keep").read_text() == "original" and (root / "etc" / "gone").exists()
    assert not (root / "var").exists()                       # the parents it had made are gone too
    make_tar(str(tar_path), {"etc/keep": b"changed", "cfg/new": b"via absolute symlink", "var/cache/x": b"x"})
    patch = rootfs_diff.apply(str(root), str(tar_path), str(deleted), str(tmp_path / "backup"))
    assert (root / "etc" / "keep").read_text() == "changed"
    assert (root / "etc" / "new").read_text() == "via absolute symlink"
    assert (root / "var" / "cache" / "x").read_text() == "x"  # parents the diff does not list (Podman's) are made
    assert not (root / "etc" / "gone").exists()
    patch.undo()
    assert (root / "etc" / "keep").read_text() == "original"
    assert (root / "etc" / "gone").read_text() == "to be deleted"
    assert not (root / "etc" / "new").exists() and not (root / "var").exists()


def test_a_deep_diff_lands_where_a_full_resolution_would_put_it(tmp_path):
    """apply() remembers the directories it laid (a compile cache is deep); what it did not lay as a
    directory, a link of the image or one the diff replaces, is resolved in full each time."""
    root = tmp_path / "rootfs"
    (root / "usr" / "lib").mkdir(parents=True)
    (root / "opt").mkdir()
    os.symlink("/usr/lib", root / "lib")           # the image's link: written through, inside the rootfs
    os.symlink("/usr/lib", root / "opt" / "cache")  # replaced by a directory of the diff
    tar_path = tmp_path / "diff.tar"
    with tarfile.open(tar_path, "w") as tar:
        for name, kind in [("root", tarfile.DIRTYPE), ("root/.cache", tarfile.DIRTYPE), ("root/.cache/a", tarfile.DIRTYPE),
                           ("root/.cache/a/k.py", tarfile.REGTYPE), ("lib/x.so", tarfile.REGTYPE),
                           ("opt/cache", tarfile.DIRTYPE), ("opt/cache/y", tarfile.REGTYPE)]:
            info = tarfile.TarInfo(name)
            info.type, info.mode = kind, 0o755 if kind == tarfile.DIRTYPE else 0o644
            info.size = 0 if kind == tarfile.DIRTYPE else len(name)
            tar.addfile(info, io.BytesIO(name.encode()) if kind == tarfile.REGTYPE else None)
    patch = rootfs_diff.apply(str(root), str(tar_path), str(tmp_path / "none"), str(tmp_path / "backup"))
    assert (root / "root" / ".cache" / "a" / "k.py").read_text() == "root/.cache/a/k.py"
    assert (root / "usr" / "lib" / "x.so").read_text() == "lib/x.so"
    assert (root / "opt" / "cache").is_dir() and not (root / "opt" / "cache").is_symlink()
    assert (root / "opt" / "cache" / "y").read_text() == "opt/cache/y" and not (root / "usr" / "lib" / "y").exists()
    patch.undo()
    assert os.readlink(root / "opt" / "cache") == "/usr/lib" and not (root / "root").exists()
    assert sorted(os.listdir(root / "usr" / "lib")) == []


def test_a_directory_remembered_through_an_image_link_is_not_reused_once_the_diff_replaces_its_target(tmp_path):
    """lib/etc is laid through the image's /lib -> usr/lib; the diff then replaces usr/lib with a
    link to the outside: lib/etc/evil must be resolved again (inside the rootfs), not written
    below the directory remembered from before."""
    root, outside = tmp_path / "rootfs", tmp_path / "outside"
    (outside / "etc").mkdir(parents=True)
    (root / "usr" / "lib").mkdir(parents=True)
    os.symlink("usr/lib", root / "lib")
    tar_path = tmp_path / "diff.tar"
    with tarfile.open(tar_path, "w") as tar:
        for name, kind, data in [("lib/etc", tarfile.DIRTYPE, b""), ("usr/lib", tarfile.SYMTYPE, b""),
                                 ("lib/etc/evil", tarfile.REGTYPE, b"written\n")]:
            info = tarfile.TarInfo(name)
            info.type, info.mode, info.size = kind, 0o755, len(data)
            info.linkname = str(outside) if kind == tarfile.SYMTYPE else ""
            tar.addfile(info, io.BytesIO(data) if data else None)
    try:
        rootfs_diff.apply(str(root), str(tar_path), str(tmp_path / "none"), str(tmp_path / "backup"))
    except UnsafeRootfsDiff:
        pass   # refusing is as good as laying it inside
    assert not (outside / "etc" / "evil").exists()
    assert sorted(os.listdir(outside / "etc")) == []


def diff_of(path, members) -> str:
    """A tar of (name, type, data or link target, mode) members, written as given (any order, repeats)."""
    with tarfile.open(path, "w") as tar:
        for name, kind, arg, mode in members:
            info = tarfile.TarInfo(name)
            info.type, info.mode = kind, mode
            data = arg if kind == tarfile.REGTYPE else b""
            info.linkname = arg if kind == tarfile.SYMTYPE else ""
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data) if data else None)
    return str(path)


def tree(top) -> dict:
    """Every entry below top: mode, link target, content."""
    out = {}
    for parent, dirs, names in os.walk(top):
        for name in dirs + names:
            p = os.path.join(parent, name)
            st = os.lstat(p)
            out[os.path.relpath(p, top)] = (st.st_mode, os.readlink(p) if os.path.islink(p) else None,
                                            open(p, "rb").read() if stat.S_ISREG(st.st_mode) else None)
    return out


FAILS = [("x", tarfile.REGTYPE, b"x", 0o644), ("x/y", tarfile.REGTYPE, b"y", 0o644)]   # laying x/y fails: undo


@pytest.mark.parametrize("case", ["a mode put back through a link", "a file put back through the diff's own link"])
def test_undo_takes_each_step_back_in_reverse_and_never_through_a_link(tmp_path, case):
    root, outside = tmp_path / "rootfs", tmp_path / "outside"
    (outside / "etc").mkdir(parents=True)
    (root / "tmp").mkdir(parents=True)
    os.chmod(root / "tmp", 0o1777)
    os.chmod(outside / "etc", 0o755)
    members = {
        # tmp chmodded, then replaced by a link out: undoing the mode first would chmod the host's /etc
        "a mode put back through a link": [("tmp", tarfile.DIRTYPE, b"", 0o755),
                                           ("tmp", tarfile.SYMTYPE, str(outside / "etc"), 0o777)],
        # d/f set aside, d replaced by a link out, the link replaced by a directory: undoing the moves
        # newest first but after every removal would move d/f back through the link
        "a file put back through the diff's own link": [("d", tarfile.DIRTYPE, b"", 0o755),
                                                        ("d/f", tarfile.REGTYPE, b"first", 0o644),
                                                        ("d/f", tarfile.REGTYPE, b"second", 0o644),
                                                        ("d", tarfile.SYMTYPE, str(outside), 0o777),
                                                        ("d", tarfile.DIRTYPE, b"", 0o755)],
    }[case]
    before, outside_before = tree(root), tree(outside)
    with pytest.raises(UnsafeRootfsDiff):
        rootfs_diff.apply(str(root), diff_of(tmp_path / "diff.tar", members + FAILS), str(tmp_path / "none"),
                          str(tmp_path / "backup"))
    assert tree(outside) == outside_before and tree(root) == before


def test_undo_after_the_restored_container_ran_leaves_what_it_linked_to_alone(tmp_path):
    """A restore that fails after CRIU undoes the diff in a rootfs its processes may have changed: a
    directory of the diff swapped for a link to the host is not followed."""
    root, victim = tmp_path / "rootfs", tmp_path / "outside" / "victim"
    (victim / "data").mkdir(parents=True)
    (victim / "data" / "keep").write_text("host file")
    root.mkdir()
    patch = rootfs_diff.apply(str(root), diff_of(tmp_path / "diff.tar", [("a", tarfile.DIRTYPE, b"", 0o755),
                                                                        ("a/data", tarfile.DIRTYPE, b"", 0o755)]),
                              str(tmp_path / "none"), str(tmp_path / "backup"))
    os.rename(root / "a", root / "a.old")   # what the restored container did
    os.symlink(victim, root / "a")
    patch.undo()
    assert (victim / "data" / "keep").read_text() == "host file"


def test_apply_then_undo_gives_back_every_rootfs_exactly(tmp_path):
    """Random images (directories of odd modes, files, links inward, outward and dangling) and random
    diffs (any order, repeats, replacements, deletions, failures midway): after undo the rootfs is
    what it was, byte for byte and mode for mode, and nothing outside it changed."""
    import random
    rng = random.Random(20261206)
    names = ["a", "b", "l", "a/b", "a/c", "b/c", "l/c", "a/b/c", "l/c/d", "usr", "usr/lib", "usr/lib/e", "lib",
             "lib/e", "lib/e/f", "tmp"]
    for trial in range(150):
        top = tmp_path / str(trial)
        root, outside = top / "rootfs", top / "outside"
        (outside / "c").mkdir(parents=True)
        root.mkdir()
        for _ in range(rng.randint(0, 5)):
            kind, name = rng.choice("dfl"), rng.choice(names)
            path = root / name
            if os.path.lexists(path) or os.path.realpath(path.parent) != str(path.parent):
                continue   # an image made without following its own links
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
            except OSError:
                continue   # a file where a parent would go
            if kind == "d":
                path.mkdir()
                os.chmod(path, rng.choice([0o755, 0o1777, 0o700]))
            elif kind == "f":
                path.write_text("image")
            else:
                os.symlink(rng.choice(["usr/lib", "a", "/a", str(outside), "../..", "/usr/lib"]), path)
        members = []
        for _ in range(rng.randint(1, 7)):
            kind = rng.choice([tarfile.DIRTYPE, tarfile.DIRTYPE, tarfile.REGTYPE, tarfile.SYMTYPE])
            arg = (rng.choice([str(outside), "usr/lib", "/a", "../..", "a"]) if kind == tarfile.SYMTYPE
                   else b"diff" if kind == tarfile.REGTYPE else b"")
            members.append((rng.choice(names), kind, arg, rng.choice([0o755, 0o700])))
        deleted = top / "deleted.files"
        deleted.write_text(json.dumps(rng.sample(names, rng.randint(0, 2))))
        before, outside_before = tree(root), tree(outside)
        try:
            rootfs_diff.apply(str(root), diff_of(top / "diff.tar", members), str(deleted), str(top / "backup")).undo()
        except UnsafeRootfsDiff:
            pass   # refused or failed midway: undone by apply itself
        assert (tree(root), tree(outside)) == (before, outside_before), (trial, members, deleted.read_text())


def test_deleted_files_may_not_climb_out(tmp_path):
    (tmp_path / "deleted.files").write_text('["../../etc/passwd"]')
    with pytest.raises(UnsafeRootfsDiff, match="climbs out"):
        rootfs_diff.read_deleted(str(tmp_path / "deleted.files"))


def staged_entry(st: store.Store, name: str, payload: bytes = b"img") -> store.Entry:
    with st.staging() as staging:
        os.makedirs(os.path.join(staging, "checkpoint"))
        with open(os.path.join(staging, layout.INVENTORY), "wb") as f:
            f.write(payload)
        fp = Fingerprint(image="", args=("a",), cwd="/", env={}, arch="x86_64", cpu="c", kernel="k", criu="4.2.1",
                         runtime="runc")
        return st.commit(staging, Manifest(namespace="default", name=name, created="2026-01-01T00:00:00Z",
                                           fingerprint=fp, fingerprint_id="0123456789abcdef",
                                           source={"container_id": "c"}))


def test_store_is_root_only_and_commit_is_all_or_nothing(tmp_path):
    st = store.Store(str(tmp_path / "store")).ensure()
    assert os.stat(st.root).st_mode & 0o777 == 0o700
    with pytest.raises(RuntimeError):
        with st.staging() as staging:
            open(os.path.join(staging, "partial"), "w").close()
            raise RuntimeError("capture died")
    assert os.listdir(os.path.join(st.root, "tmp")) == [] and st.all_entries() == []
    entry = staged_entry(st, "one")
    store.verify(entry)
    assert [e.ident for e in st.entries("default", "one")] == [entry.ident]


def test_a_recapture_replaces_the_entry_with_the_same_fingerprint(tmp_path):
    st = store.Store(str(tmp_path / "store")).ensure()
    first = staged_entry(st, "same", b"v1")
    second = staged_entry(st, "same", b"v2")
    assert [e.ident for e in st.entries("default", "same")] == [second.ident]
    assert not os.path.exists(first.path)


def test_one_capture_per_name_at_a_time(tmp_path):
    st = store.Store(str(tmp_path / "store")).ensure()
    with st.capturing("default", "busy"):
        with pytest.raises(StoreError, match="already running"):
            with st.capturing("default", "busy"):
                pass
        with st.capturing("default", "other"):
            pass


def test_verification_notices_a_changed_file_even_after_a_cached_pass(tmp_path):
    st = store.Store(str(tmp_path / "store")).ensure()
    entry = staged_entry(st, "cached", b"abcdef")
    store.verify(entry)  # writes the cache
    with open(os.path.join(entry.path, layout.INVENTORY), "r+b") as f:
        f.write(b"X")
    with pytest.raises(SnapshotDamaged, match="checksum mismatch"):
        store.verify(entry)


def test_gc_keeps_the_store_under_its_budget(tmp_path):
    st = store.Store(str(tmp_path / "store")).ensure()
    old = staged_entry(st, "old", b"x" * 1000)
    new = staged_entry(st, "new", b"y" * 1000)
    store.touch_used(new)
    removed = st.gc(max_bytes=1500)
    assert removed == [old.path, os.path.dirname(old.path)]      # and its name's dir, left empty
    assert [e.name for e in st.all_entries()] == ["new"]
    assert os.listdir(os.path.join(st.root, "snapshots", "default")) == ["new"]


def test_an_entrys_files_are_root_only_whatever_wrote_them(tmp_path):
    """Page images hold process memory, secrets included: 0600 files in 0700 dirs."""
    st = store.Store(str(tmp_path / "store")).ensure()
    entry = staged_entry(st, "private")
    modes = {os.path.relpath(os.path.join(d, n), entry.path): os.stat(os.path.join(d, n)).st_mode & 0o777
             for d, dirs, files in os.walk(entry.path) for n in dirs + files}
    assert modes and all(m == (0o700 if os.path.isdir(os.path.join(entry.path, p)) else 0o600)
                         for p, m in modes.items()), modes


def test_a_bound_dev_shm_travels_as_files_and_is_laid_with_an_undo(tmp_path):
    """CRI binds the sandbox's shm at /dev/shm: its files go into the snapshot, and into the
    restoring pod's shm (undone if the restore fails); a tmpfs of the container's own needs nothing."""
    from runtime.snapshot import dev_shm
    source, target, out = tmp_path / "shm-a", tmp_path / "shm-b", tmp_path / "out"
    for d in (source, target, out):
        d.mkdir()
    (source / "psm_1").write_bytes(b"s" * 4096)
    (source / "sem.mp-x").write_bytes(b"m" * 32)
    (target / "other").write_text("the new pod's own")
    bound = lambda d: {"mounts": [{"destination": "/dev/shm", "type": "bind", "source": str(d), "options": ["rbind"]}]}
    tar = str(out / "dev-shm.tar")
    assert dev_shm.write(bound(source), tar) > 0 and not (out / "dev-shm.tar.deleted").exists()
    patch = dev_shm.lay(bound(target), tar, str(tmp_path / "backup"))
    assert patch is not None and sorted(os.listdir(target)) == ["other", "psm_1", "sem.mp-x"]
    assert (target / "psm_1").read_bytes() == b"s" * 4096
    patch.undo()
    assert os.listdir(target) == ["other"]
    own = {"mounts": [{"destination": "/dev/shm", "type": "tmpfs", "source": "shm"}]}
    assert dev_shm.write(own, str(out / "none.tar")) == 0 and not (out / "none.tar").exists()
    assert dev_shm.lay(own, tar, str(tmp_path / "backup2")) is None


def test_a_manifest_skips_the_schema_only_while_its_bytes_are_the_ones_that_passed(tmp_path):
    """The sealed schema record names the bytes that passed; any other bytes are checked again."""
    st = store.Store(str(tmp_path / "store")).ensure()
    entry = staged_entry(st, "checked")
    assert store.load_manifest(entry.path).name == "checked"
    assert os.path.exists(os.path.join(entry.path, verified.SCHEMA_RECORD))
    path = os.path.join(entry.path, layout.MANIFEST)
    good = open(path, "rb").read()
    bad = json.loads(good)
    bad["fingerprint_id"] = "not-hex"
    with open(path, "w") as f:
        json.dump(bad, f)
    with pytest.raises(SnapshotDamaged, match="fingerprint_id"):
        store.load_manifest(entry.path)
    with open(path, "wb") as f:
        f.write(good)
    assert store.load_manifest(entry.path).fingerprint_id == json.loads(good)["fingerprint_id"]


# --- staging dirs belong to their process until the commit's rename: gc never takes a live one ---
GC = "import sys; from runtime.snapshot import store; print('\\n'.join(store.Store(sys.argv[1]).gc(1 << 50)))"


def gc_elsewhere(st: store.Store) -> list[str]:
    """gc in a process of its own, as `rewarm gc` runs (ownership is judged across processes)."""
    out = subprocess.run([sys.executable, "-c", GC, st.root], capture_output=True, text=True, check=True)
    return out.stdout.split()


def gc_before(monkeypatch: pytest.MonkeyPatch, st: store.Store, steps: list[str]) -> list[list[str]]:
    """Run a gc elsewhere before each of the store's commit steps named; returns what each removed."""
    swept: list[list[str]] = []
    for name in steps:
        def step_after_gc(*args, _real=getattr(store, name), **kwargs):  # type: ignore[no-untyped-def]
            swept.append(gc_elsewhere(st))
            return _real(*args, **kwargs)
        monkeypatch.setattr(store, name, step_after_gc)
    return swept


def test_gc_at_every_step_of_a_commit_leaves_the_capture_whole(tmp_path, monkeypatch):
    st = store.Store(str(tmp_path / "store")).ensure()
    swept = gc_before(monkeypatch, st, ["checksum_tree", "write_json", "fsync_tree", "_root_only"])
    entry = staged_entry(st, "busy", b"x" * 4096)
    assert len(swept) == 4 and swept == [[]] * 4           # each gc ran and took nothing
    store.verify(entry)                                      # every file there, as its manifest says
    assert not os.path.exists(entry.file(store.OWNER_FILE))  # ownership ended with the rename


def test_gc_at_every_step_of_a_pulls_commit_leaves_it_whole(tmp_path, monkeypatch):
    st = store.Store(str(tmp_path / "store")).ensure()
    part = files.owned_dir(os.path.join(st.root, "tmp", "pull-default-pulled-0123"), exist_ok=True)
    os.makedirs(os.path.join(part, "checkpoint"))
    with open(os.path.join(part, layout.INVENTORY), "wb") as f:
        f.write(b"pulled")
    fp = Fingerprint(image="", args=("a",), cwd="/", env={}, arch="x86_64", cpu="c", kernel="k", criu="4.2.1",
                     runtime="runc")
    manifest = Manifest(namespace="default", name="pulled", created="2026-01-01T00:00:00Z", fingerprint=fp,
                        fingerprint_id="0123456789abcdef", source={"container_id": "c"}, files=store.checksum_tree(part))
    swept = gc_before(monkeypatch, st, ["write_json", "_root_only"])
    entry = st.commit_pulled(part, manifest)
    assert swept == [[], []]
    store.verify(entry)


@pytest.fixture
def other_process() -> Iterator[subprocess.Popen[bytes]]:
    p = subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.read()"], stdin=subprocess.PIPE)
    yield p
    p.kill()
    p.wait()


def owner_record(pid: int, **change: object) -> str:
    return json.dumps({**dataclasses.replace(files.this_process(), pid=pid, start=files.start_time(pid)).to_json(),
                       **change})


def dead_pid() -> int:
    p = subprocess.Popen(["true"])
    p.wait()
    return p.pid


def ended_owner(**change: object) -> str:
    """The record of a process taken while it ran; the process has ended since."""
    p = subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.read()"], stdin=subprocess.PIPE)
    record = owner_record(p.pid, **change)
    p.kill()
    p.wait()
    return record


@pytest.mark.parametrize("record, kept", [
    (lambda live: owner_record(live), True),
    (lambda live: owner_record(live, start=files.start_time(live) - 1), False),     # its pid, another process
    (lambda live: owner_record(live, boot="0" * 32), False),                       # before a reboot
    (lambda live: ended_owner(pid_ns="pid:[1]"), True),                            # cannot be looked up here
    (lambda live: ended_owner(), False),
    (lambda live: str(live), True),                                                # an earlier rewarm's record
    (lambda live: str(dead_pid()), False),
    (lambda live: None, False),                                                    # names no owner
    (lambda live: "{not json", False),
], ids=["live", "pid-reused", "other-boot", "other-pid-namespace", "ended", "old-format-live", "old-format-ended",
        "no-record", "garbled"])
def test_gc_reclaims_a_staging_dir_only_when_its_owner_provably_ended(tmp_path, other_process, record, kept):
    st = store.Store(str(tmp_path / "store")).ensure()
    path = os.path.join(st.root, "tmp", "capture")
    os.mkdir(path)
    text = record(other_process.pid)
    if text is not None:
        with open(os.path.join(path, store.OWNER_FILE), "w") as f:
            f.write(text)
    assert gc_elsewhere(st) == ([] if kept else [path])
    assert os.path.isdir(path) == kept
    assert [n for n in os.listdir(os.path.join(st.root, "tmp")) if n != "capture"] == []


def test_a_capture_killed_midway_is_reclaimed_and_a_resumed_pull_is_not(tmp_path):
    st = store.Store(str(tmp_path / "store")).ensure()
    capturer = subprocess.Popen([sys.executable, "-c", "import sys\nfrom runtime.snapshot import store\n"
                                 "with store.Store(sys.argv[1]).staging() as s:\n    print(s, flush=True)\n"
                                 "    sys.stdin.read()", st.root], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert capturer.stdout is not None
        staging = capturer.stdout.readline().strip()
        assert gc_elsewhere(st) == [] and os.path.isdir(staging)
    finally:
        capturer.kill()
        capturer.wait()
    assert gc_elsewhere(st) == [staging] and os.listdir(os.path.join(st.root, "tmp")) == []
    part = os.path.join(st.root, "tmp", "pull-default-x-0123")
    os.mkdir(part)
    with open(os.path.join(part, store.OWNER_FILE), "w") as f:
        f.write(ended_owner())   # a pull that stopped, its part kept to resume from
    files.owned_dir(part, exist_ok=True)   # the next pull resumes it
    assert gc_elsewhere(st) == [] and os.path.isdir(part)
