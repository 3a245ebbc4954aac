"""The restore's read-ahead of the files a worker reads back (page_cache.read_ahead_in_background):
what it reads into the page cache, what it leaves alone, and when it stops. Files on the disk,
pushed out of the page cache first, as after a node's reboot."""
from __future__ import annotations

import os
import threading

import pytest

from helpers import evict, wait_for
from runtime.snapshot import page_cache

CHUNK = page_cache.CHUNK


@pytest.fixture
def shards(tmp_path) -> list[str]:
    """Three model shards of 2.5 chunks each, none of them in the page cache."""
    paths = []
    for i in range(3):
        path = str(tmp_path / f"model-0000{i + 1}-of-00003.safetensors")
        with open(path, "wb") as f:
            f.write(os.urandom(CHUNK * 5 // 2))
        evict(path)
        paths.append(path)
    assert sum(map(page_cache.resident_bytes, paths)) < CHUNK   # (the kernel may keep a page or two)
    return paths


def bytes_this_process_read() -> int:
    """What read()s of this process copied out (rchar), the read-ahead's threads included."""
    with open("/proc/self/io") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("rchar:"))


def read_ahead_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "rewarm-read-ahead"]


def finish() -> None:
    for t in read_ahead_threads():
        t.join(30)
        assert not t.is_alive()


def test_the_read_ahead_brings_every_file_into_the_page_cache(shards):
    page_cache.read_ahead_in_background(shards, 1, 1 << 40)
    finish()
    assert [page_cache.resident_bytes(p) for p in shards] == [os.path.getsize(p) for p in shards]


def test_ranges_already_in_the_page_cache_are_not_read_again(shards):
    with open(shards[1], "rb") as f:   # the worker (or `rewarm warm`) read this one already
        f.read()
    before = bytes_this_process_read()
    page_cache.read_ahead_in_background(shards, 2, 1 << 40)
    finish()
    copied = bytes_this_process_read() - before
    assert copied <= os.path.getsize(shards[0]) + os.path.getsize(shards[2]) + 4096, copied   # (+ /proc/self/io)
    assert [page_cache.resident_bytes(p) for p in shards] == [os.path.getsize(p) for p in shards]


def test_it_reads_no_more_than_its_budget_and_in_the_order_given(shards):
    page_cache.read_ahead_in_background(shards, 1, 3 * CHUNK)
    finish()
    resident = [page_cache.resident_bytes(p) for p in shards]
    assert resident[0] == os.path.getsize(shards[0])     # the first shard whole, then half a chunk of the
    assert resident[1] <= 2 * CHUNK and resident[2] < CHUNK  # second's first chunk (and the kernel's own read-ahead)


def test_setting_its_event_stops_it(shards):
    reads_started = threading.Event()
    release = threading.Event()
    real_preadv = os.preadv

    def slow_preadv(fd, buffers, offset):   # the first read waits until the restore has ended
        reads_started.set()
        release.wait(10)
        return real_preadv(fd, buffers, offset)
    os.preadv = slow_preadv
    try:
        stop = page_cache.read_ahead_in_background(shards, 1, 1 << 40)
        wait_for(reads_started.is_set, 10, "the first read")
        stop.set()
        release.set()
        finish()
    finally:
        os.preadv = real_preadv
    assert sum(map(page_cache.resident_bytes, shards)) <= 2 * CHUNK   # the one read under way, nothing after it


def test_nothing_to_read_starts_no_thread(shards):
    page_cache.read_ahead_in_background([], 1, 1 << 40)
    page_cache.read_ahead_in_background(shards, 1, 0)
    assert read_ahead_threads() == []
