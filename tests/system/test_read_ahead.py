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
SLACK = 64 << 10   # under the suite's memory pressure the kernel may take a page or two back at once


@pytest.fixture
def shards(tmp_path) -> list[tuple[str, int]]:
    """Three model shards of 2.5 chunks each (path, size), none of them in the page cache."""
    files = []
    for i in range(3):
        path = str(tmp_path / f"model-0000{i + 1}-of-00003.safetensors")
        with open(path, "wb") as f:
            f.write(os.urandom(CHUNK * 5 // 2))
        evict(path)
        files.append((path, CHUNK * 5 // 2))
    assert sum(page_cache.resident_bytes(p) for p, _ in files) < 1 << 20
    return files


def resident(files: list[tuple[str, int]]) -> list[int]:
    return [page_cache.resident_bytes(p) for p, _ in files]


def bytes_this_process_read() -> int:
    """What read()s of this process copied out (rchar), the read-ahead's thread included."""
    with open("/proc/self/io") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("rchar:"))


def finish() -> None:
    for t in [t for t in threading.enumerate() if t.name == "rewarm-read-ahead"]:
        t.join(30)
        assert not t.is_alive()


def test_the_read_ahead_brings_every_file_into_the_page_cache(shards):
    page_cache.read_ahead_in_background(shards, 1 << 40)
    finish()
    assert all(n >= size - SLACK for n, (_, size) in zip(resident(shards), shards)), resident(shards)


def test_ranges_already_in_the_page_cache_are_not_read_again(shards):
    with open(shards[1][0], "rb") as f:   # the worker (or `rewarm warm`) read this one already
        f.read()
    before = bytes_this_process_read()
    page_cache.read_ahead_in_background(shards, 1 << 40)
    finish()
    copied = bytes_this_process_read() - before
    assert copied <= shards[0][1] + shards[2][1] + 4096, copied   # (+ /proc/self/io itself)
    assert all(n >= size - SLACK for n, (_, size) in zip(resident(shards), shards)), resident(shards)


def test_it_reads_no_more_than_its_budget_and_in_the_order_given(shards):
    page_cache.read_ahead_in_background(shards, shards[0][1] + CHUNK // 4)
    finish()
    first, second, third = resident(shards)
    assert first >= shards[0][1] - SLACK    # the first shard whole; a chunk of the next would pass the budget
    assert second < 1 << 20 and third < 1 << 20


def test_a_file_is_read_only_at_the_size_the_capture_saw(shards, tmp_path):
    grown = str(tmp_path / "grown")
    with open(grown, "wb") as f:   # the worker made its 4 MiB file a 1 TiB one since (a sparse hole)
        f.truncate(1 << 40)
    (path, size), (other, other_size) = shards[0], shards[1]
    page_cache.read_ahead_in_background([(grown, 4 << 20), (path, size - 1), (other, other_size)], 1 << 40)
    finish()                                                       # (within its 30 s: no terabyte read)
    assert page_cache.resident_bytes(path) < 1 << 20              # not of the size it had: left alone
    assert page_cache.resident_bytes(other) >= other_size - SLACK   # and the reader went on to the next


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
        stop = page_cache.read_ahead_in_background(shards, 1 << 40)
        wait_for(reads_started.is_set, 10, "the first read")
        stop.set()
        release.set()
        finish()
    finally:
        os.preadv = real_preadv
    assert sum(resident(shards)) <= 2 * CHUNK   # the one read under way, nothing after it
