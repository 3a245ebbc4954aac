"""CRIU's own test suite (zdtm) against rewarm's CRIU with the parallel fill forced on: the memory,
COW, shared-memory, THP, thread and process-tree tests of packaging/criu/zdtm-subset.txt, each
dumped and restored in the host and in its own namespaces, must pass (they pass on stock CRIU)."""
from __future__ import annotations

import glob
import os
import re
import shutil
import subprocess
import time
from typing import Iterator

import pytest

from runtime.container import criu
from runtime.lab.runc_lab import CHECKOUT

TREE = "/opt/rewarm/criu-src"        # kept by packaging/install-node.sh --keep-source (setup.sh)
SUBSET = os.path.join(CHECKOUT, "packaging", "criu", "zdtm-subset.txt")

ZDTM_HIERARCHIES = "name=zdtmtst"   # the named cgroup v1 hierarchies zdtm.py mounts (zdtmtst, zdtmtst.defaultroot)


def listed() -> list[str]:
    """zdtm's hierarchies that this process's /proc/self/cgroup lists."""
    with open("/proc/self/cgroup") as f:
        return [name for line in f if line.count(":") >= 2 and (name := line.split(":")[1]).startswith(ZDTM_HIERARCHIES)]


@pytest.fixture
def no_zdtm_hierarchy_left(tmp_path) -> Iterator[None]:
    """zdtm leaves its named hierarchies behind, unmounted and on their way out: while one is still
    listed in /proc/PID/cgroup, a later CRIU dump (of any test) that mounts it by name alone fails with
    "No subsys list or none specified" once it is gone. Ended here: each mounted again (which keeps or
    makes it), emptied, unmounted, and waited for until no process lists it."""
    yield
    for i, name in enumerate(listed()):
        mnt = tmp_path / f"zdtm-cgroup-{i}"
        mnt.mkdir()
        subprocess.run(["mount", "-t", "cgroup", "-o", f"none,{name}", "none", str(mnt)], check=True)
        try:
            for parent, dirs, _ in os.walk(mnt, topdown=False):
                for d in dirs:
                    os.rmdir(os.path.join(parent, d))
        finally:
            subprocess.run(["umount", str(mnt)], check=True)
    deadline = time.monotonic() + 60
    while listed():
        assert time.monotonic() < deadline, f"zdtm's cgroup hierarchies did not go away: {listed()}"
        time.sleep(0.1)


def test_zdtm_memory_tests_pass_with_sixteen_readers_and_huge_pages(node, tmp_path, no_zdtm_hierarchy_left):
    assert os.path.exists(os.path.join(TREE, ".zdtm-ready")), "packaging/setup.sh prepares zdtm"
    binary = os.path.realpath(node.criu if os.path.isabs(node.criu) else "/usr/local/sbin/criu")
    assert criu.has_parallel_fill(binary)
    tests = [line.strip() for line in open(SUBSET) if line.strip() and not line.startswith("#")]
    config = tmp_path / "pfill.conf"
    config.write_text("restore-threads 16\nrestore-thp\n")   # zdtm passes --no-default-config: this file it reads
    argv = ["/usr/bin/python3", "./zdtm.py", "run", *(a for t in tests for a in ("-t", t)), "-f", "h,ns",
            "--keep-going", "--ignore-taint", "--keep-img", "always", "--criu-bin", binary]
    out = subprocess.run(argv, cwd=os.path.join(TREE, "test"), capture_output=True, text=True, timeout=1200,
                         env={**os.environ, "PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "ZDTM_FORCE_SUID": "1",
                              "CRIU_CONFIG_FILE": str(config)})
    log = out.stdout + out.stderr
    passed = set(re.findall(r"Test (\S+) PASS", log))
    failed = set(re.findall(r"Test (\S+) FAIL", log))
    assert failed == set() and out.returncode == 0, log[-4000:]
    assert passed == set(tests), sorted(set(tests) - passed)
    dumps = os.path.join(TREE, "test", "dump")
    restore_logs = glob.glob(os.path.join(dumps, "**", "restore.log"), recursive=True)
    fills = [line for path in restore_logs for line in open(path, errors="replace") if "pfill: task" in line]
    shutil.rmtree(dumps, ignore_errors=True)
    assert restore_logs and fills, "the parallel fill did not run"    # the config reached every restore
