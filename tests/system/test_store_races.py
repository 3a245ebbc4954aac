"""Races against the store and the files a worker reads back, with real runc and CRIU:

- `rewarm gc` in a loop beside captures of a large worker never takes the capture in progress;
- warm reads each file through one descriptor that it opened without following a link, so a link
  swapped in while it runs (for a file the container can write, or a directory above it) never
  makes it open a host file outside the mount, and a link there beforehand is left out with the
  reason; nothing but a regular file is ever opened (a FIFO would block, a device runs its driver).
"""
from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
import threading
import time
from typing import Iterator

import pytest

from helpers import events, evict, rewarm_cli
from opens import FifoTrap, Opens
from runtime.snapshot import page_cache, store
from runtime.engine import capture, warm
from runtime.lab.runc_lab import Lab
from runtime.model.settings import Settings

HOOKS = {"rewarm.dev/quiesce-http": "http://127.0.0.1:8080/sleep", "rewarm.dev/resume-http": "http://127.0.0.1:8080/wake_up"}


# --- gc beside captures --------------------------------------------------------------------------
class GcLoop(threading.Thread):
    """`rewarm gc --max-bytes 100G` again and again, as an operator's cron job might, until stopped."""

    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.runs: list[tuple[float, float, subprocess.CompletedProcess[str]]] = []
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.is_set():
            began = time.monotonic()
            out = rewarm_cli("gc", "--max-bytes", "100G")
            self.runs.append((began, time.monotonic(), out))

    def during(self, began: float, ended: float) -> int:
        return sum(1 for s, e, _ in self.runs if s >= began and e <= ended)


@pytest.fixture
def gc_loop() -> Iterator[GcLoop]:
    loop = GcLoop()
    loop.start()
    yield loop
    loop.stop.set()
    loop.join(60)


def test_gc_in_a_loop_beside_captures_of_a_large_worker_never_takes_the_capture(lab: Lab, node: Settings, gc_loop):
    src = lab.create("gc-race", lab.worker({"rewarm.dev/snapshot": "gc-race"}, env={"BALLAST_MB": "600"}))
    before, _ = src.wait_ready(timeout=120)
    for _ in range(3):
        began = time.monotonic()
        entry = capture.capture(node, lab.runc_root, src.cid, "gc-race", leave_running=True)
        assert gc_loop.during(began, time.monotonic()) >= 2      # whole gc runs fell inside the capture
        store.verify(entry, deep=True)                           # every file there, as its manifest says
        assert entry.manifest.capture.checkpoint_bytes > 600 << 20
    assert [out.returncode for _, _, out in gc_loop.runs if out.returncode != 0] == []
    assert src.get()["boot_id"] == before["boot_id"]
    gc_loop.stop.set()
    gc_loop.join(60)
    assert rewarm_cli("gc", "--max-bytes", "100G").returncode == 0
    assert os.listdir(os.path.join(node.store, "tmp")) == []     # nothing left once no capture runs


# --- warm and links ---------------------------------------------------------------------------------
@dataclasses.dataclass
class ReadBack:
    """A captured worker that reads /data/ballast.bin back, and a file outside its mount that a
    link could lead to: of the same size and name, so only the link would keep warm from it."""
    entry: store.Entry
    data: str            # the bind mount's source
    inside: str          # the file the capture recorded
    outside_dir: str
    outside: str


@pytest.fixture
def read_back(lab: Lab, node: Settings, tmp_path) -> ReadBack:
    os.chmod(tmp_path, 0o755)
    data, outside_dir = tmp_path / "data", tmp_path / "outside"
    data.mkdir()
    outside_dir.mkdir()
    chunk = os.urandom(1 << 20)
    for f in (data / "ballast.bin", outside_dir / "ballast.bin"):
        f.write_bytes(chunk * 256)     # 16 chunks of warm's reads
    name = f"reads-back-{tmp_path.name[-12:].strip('_').lower()}"
    w = lab.worker({"rewarm.dev/snapshot": name, **HOOKS}, env={"BALLAST_FILE": "/data/ballast.bin"})
    w.binds["/data"] = str(data)
    source = lab.create(name[:20], w)
    source.wait_ready()
    entry = capture.capture(node, lab.runc_root, source.cid, name, leave_running=True)
    assert [f.host for f in entry.manifest.reload_files] == [str(data / "ballast.bin")]
    return ReadBack(entry, str(data), str(data / "ballast.bin"), str(outside_dir), str(outside_dir / "ballast.bin"))


def swap_in_link(rb: ReadBack, where: str) -> None:
    """Put a link to the outside in place of the file, or of the directory above it."""
    if where == "file":
        os.symlink(rb.outside, rb.inside + ".link")
        os.rename(rb.inside + ".link", rb.inside)      # one step: the path is never missing
    else:
        os.rename(rb.data, rb.data + ".moved")
        os.symlink(rb.outside_dir, rb.data)


@pytest.mark.parametrize("where", ["file", "directory"])
def test_a_link_swapped_in_while_warm_runs_never_opens_the_outside_file(read_back, node, where):
    rb = read_back
    evict(rb.inside)
    opens = Opens(rb.inside, rb.outside)
    try:
        run = subprocess.Popen([os.path.join(os.path.dirname(sys.executable), "rewarm"), "warm", rb.entry.name],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        # The second open of the file is warm's read (the first counted what was resident before).
        assert opens.wait_for(rb.inside, 2, timeout=60), opens.counts
        swap_in_link(rb, where)
        out, err = run.communicate(timeout=120)
        assert run.returncode == 0, err
        assert opens.update()[rb.outside] == 0, out
        assert opens.counts[rb.inside] == 2      # one descriptor read every chunk
    finally:
        opens.close()


@pytest.mark.parametrize("where, reason", [
    ("file", "a symbolic link (not followed)"),
    ("directory", "data on its path is a symbolic link (not followed)")])
def test_a_link_out_of_the_mount_is_left_out_of_warm_with_the_reason(read_back, node, where, reason):
    rb = read_back
    swap_in_link(rb, where)
    opens = Opens(rb.outside)
    try:
        warm.after(dataclasses.replace(node, warm_after=("capture",)), "capture", rb.entry)
        assert warm.resident(rb.entry) <= rb.entry.size() and warm.size(rb.entry) == rb.entry.size()
        assert opens.update()[rb.outside] == 0
    finally:
        opens.close()
    warmed = [e for e in events(node, "warmed") if e["entry"] == rb.entry.ident][-1]
    assert warmed["left_out"] == [f"{rb.inside}: {reason}"]
    assert warmed["bytes"] == rb.entry.size()            # the entry's own files all the same


# --- what warm opens ----------------------------------------------------------------------------------
def test_warm_opens_each_file_once_and_reads_every_chunk_through_it(tmp_path):
    path = str(tmp_path / "pages-1.img")
    with open(path, "wb") as f:
        f.write(os.urandom(page_cache.CHUNK * 3 + 12345))
    opens = Opens(path)
    try:
        read = page_cache.warm([path], threads=1)   # readers one after another: each open has its close
        assert read == os.path.getsize(path) and opens.update()[path] == 1
    finally:
        opens.close()


@pytest.fixture
def trap(tmp_path) -> Iterator[FifoTrap]:
    t = FifoTrap(str(tmp_path / "fifo"))
    yield t
    t.close()


def test_nothing_but_a_regular_file_is_ever_opened(tmp_path, trap):
    device = str(tmp_path / "null")
    os.mknod(device, 0o600 | 0o020000, os.makedev(1, 3))   # a character device: opening it runs its driver
    small = tmp_path / "small"
    small.write_bytes(b"x" * 10)
    left_out: list[tuple[str, str]] = []
    assert page_cache.warm([trap.path, device, str(small)], 2, on_left_out=lambda p, why: left_out.append((p, why)),
                           sizes={str(small): 11}) == 0
    assert left_out == [(trap.path, "not a regular file (mode prw-r--r--)"),
                        (device, "not a regular file (mode crw-------)"),
                        (str(small), "10 bytes, not the 11 it had when captured")]
    page_cache.prefetch_in_background([trap.path, device], 2)
    page_cache.read_ahead_in_background([(trap.path, 0), (device, 0)], 1 << 30)
    for t in [t for t in threading.enumerate() if t.name in ("rewarm-prefetch", "rewarm-read-ahead")]:
        t.join(10)
        assert not t.is_alive()
    assert page_cache.resident_bytes(trap.path) == 0 and page_cache.resident_bytes(device) == 0
    assert not trap.sprung                                    # no open of the FIFO for reading, ever


def test_warm_holds_few_files_open_at_once(tmp_path):
    """A model directory may name thousands of files: warm opens each once, not all at once."""
    paths = []
    for i in range(300):
        p = tmp_path / f"shard-{i}"
        p.write_bytes(b"w" * 4096)
        paths.append(str(p))
    script = ("import resource, sys; from runtime.snapshot import page_cache\n"
              "resource.setrlimit(resource.RLIMIT_NOFILE, (page_cache.OPEN_AT_ONCE + 40, 4096))\n"
              "print(page_cache.warm(sys.argv[1:], 8))")
    out = subprocess.run([sys.executable, "-c", script, *paths], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr[-2000:]
    assert int(out.stdout) == 300 * 4096
