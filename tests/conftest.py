"""Fixtures for tests that drive real runc and CRIU through thaw-runc.

Everything a test creates (store, runc root, bundles, network namespaces, cgroups) lives under one
temporary directory or carries the lab's tag, and is removed afterwards.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile

import pytest

from runtime import layout, settings, store
from runtime.lab import Lab


@pytest.fixture(scope="session")
def node():
    """A thaw configuration of our own: store, event log and CRIU config in a temp dir."""
    top = tempfile.mkdtemp(prefix="thaw-test-")
    os.chmod(top, 0o755)
    cfg = {"store": os.path.join(top, "store"), "event_log": os.path.join(top, "events.jsonl"),
           "metrics_file": os.path.join(top, "metrics", "thaw.prom"),
           "criu": shutil.which("criu") or "criu",
           **json.loads(os.environ.get("THAW_TEST_CONFIG", "{}"))}  # e.g. runtime and CRIU paths on the GPU host
    path = os.path.join(top, "config.json")
    with open(path, "w") as f:
        json.dump(cfg, f)
    old = os.environ.get("THAW_CONFIG")
    os.environ["THAW_CONFIG"] = path
    yield settings.load(path)
    if old is None:
        os.environ.pop("THAW_CONFIG", None)
    else:
        os.environ["THAW_CONFIG"] = old
    shutil.rmtree(top, ignore_errors=True)


@pytest.fixture
def lab(node, tmp_path_factory):
    directory = str(tmp_path_factory.mktemp("lab"))
    os.chmod(directory, 0o755)
    the_lab = Lab(directory)
    yield the_lab
    the_lab.close()


def thaw_cli(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    """The `thaw` command of this venv, as an operator runs it."""
    return subprocess.run([os.path.join(os.path.dirname(sys.executable), "thaw"), *args],
                          capture_output=True, text=True, timeout=timeout)


def events(node, kind: str | None = None) -> list[dict]:
    try:
        with open(node.event_log) as f:
            rows = [json.loads(line) for line in f if line.strip()]
    except FileNotFoundError:
        return []
    return [r for r in rows if kind is None or r["event"] == kind]


def clone_entry(node, entry: store.Entry, new_name: str) -> str:
    """Copy a committed entry under another snapshot name (as if captured under that name)."""
    dest_parent = store.Store(node.store).name_dir(entry.namespace, new_name)
    os.makedirs(dest_parent, mode=0o700, exist_ok=True)
    dest = os.path.join(dest_parent, entry.ident)
    shutil.copytree(entry.path, dest)
    meta = layout.read_json(os.path.join(dest, layout.MANIFEST))
    meta["name"] = new_name
    layout.write_json(os.path.join(dest, layout.MANIFEST), meta)
    for leftover in (store.VERIFIED_FILE, store.LAST_USED):
        if os.path.exists(os.path.join(dest, leftover)):
            os.unlink(os.path.join(dest, leftover))
    return dest


def reseal(entry_path: str) -> None:
    """Recompute the manifest's checksums: a foreign snapshot whose checksums agree with its content."""
    meta = layout.read_json(os.path.join(entry_path, layout.MANIFEST))
    sums = store.checksum_tree(entry_path)
    meta["files"] = {k: v for k, v in sums.items() if k not in (layout.MANIFEST, store.VERIFIED_FILE, store.LAST_USED)}
    layout.write_json(os.path.join(entry_path, layout.MANIFEST), meta)
