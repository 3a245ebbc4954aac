"""rewarm's CRIU fills a restored process's memory with parallel readers (restore_threads): every
byte comes back, in a container with its own PID namespace, several processes (COW-shared pages)
and threads, over 1 GiB of os.urandom content in a large anonymous mapping, hundreds of small ones,
MAP_SHARED memory (filled by the readers too), dirty private pages over a tmpfs file, a MADV_HUGEPAGE and a MADV_NOHUGEPAGE
region. The digests each process takes of its memory after the restore equal those of the source,
with one reader (CRIU's own fill) and with eight."""
from __future__ import annotations

import json
import os

import pytest

from helpers import config_named
from runtime.container import criu
from runtime.engine import capture
from runtime.engine.restore import RESTORE_LOG_COPY
from runtime.lab.runc_lab import Lab

WORKERS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "workers")
SNAPSHOT = {"rewarm.dev/snapshot": "memory"}


def mem_worker(lab: Lab):  # type: ignore[no-untyped-def]
    return lab.worker(SNAPSHOT, args=["/usr/bin/python3", "/app/memworker.py"], app_dir=WORKERS)


@pytest.fixture(scope="module")
def source(node, tmp_path_factory):
    assert criu.has_parallel_fill(node.criu), "packaging/install-node.sh installs rewarm's CRIU"
    directory = str(tmp_path_factory.mktemp("memory-source"))
    os.chmod(directory, 0o755)
    lab = Lab(directory)
    c = lab.create("memsrc", mem_worker(lab))
    c.wait_ready(timeout=240, path="/health")
    before = c.get("/digest", timeout=120)
    entry = capture.capture(node, lab.runc_root, c.cid, "memory", leave_running=True)
    assert entry.manifest.capture.checkpoint_bytes > 1 << 30
    yield before
    lab.close()


@pytest.mark.parametrize("threads, huge_pages", [(1, False), (8, True)])
def test_every_byte_comes_back_with_one_reader_and_with_eight(lab, node, source, tmp_path, threads, huge_pages):
    config = tmp_path / "config.json"
    config.write_text(json.dumps({**node.to_json(), "restore_threads": threads, "restore_huge_pages": huge_pages}))
    with config_named(str(config)):
        c = lab.create(f"mem{threads}", mem_worker(lab))
    assert "restored" in c.runtime_log(), c.runtime_log()
    after = c.get("/digest", timeout=120)
    assert after["parent"] == source["parent"]
    assert after["children"] == source["children"]            # COW-shared pages and their own versions
    assert after["threads"] == source["threads"] and len(after["pids"]) == 3
    assert after["huge_kb"]["nohuge"] == 0                    # recorded MADV_NOHUGEPAGE is kept
    with open(os.path.join(lab.runc_root, c.cid, RESTORE_LOG_COPY), errors="replace") as f:
        log = f.read().splitlines()
    fills = [line for line in log if "pfill: task" in line and "filled" in line]
    shared = [line for line in log if "Filled shmem" in line]    # MAP_SHARED memory (a GPU worker's pinned buffers)
    if threads == 1:
        assert fills == [] and shared == []                    # CRIU's own code path
    else:
        root = [line for line in fills if "pfill: task 1:" in line]   # PID 1 holds most of the memory
        assert root and f"{threads} readers" in root[0], fills       # (small fills use fewer readers)
        assert any(f"of {64 << 20} bytes with up to {threads} readers" in line for line in shared), shared
