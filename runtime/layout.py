"""Names of the files in a snapshot, and the one way thaw reads and writes JSON files.

The layout is the checkpoint-archive layout of CRI-O and Podman (so their tools can read thaw
snapshots) plus thaw's own manifest.json.
"""
from __future__ import annotations

import json
import os
import tempfile
from typing import Any

CHECKPOINT_DIR = "checkpoint"          # CRIU images (inventory.img, pages-*.img, ...)
CONFIG_DUMP = "config.dump"            # container facts at capture (id, name, image, time)
SPEC_DUMP = "spec.dump"                # the OCI runtime spec (config.json) of the captured container
ROOTFS_DIFF = "rootfs-diff.tar"        # files the container changed in its rootfs
DELETED_FILES = "deleted.files"        # JSON list of paths the container deleted from its rootfs
STATS_DUMP = "stats-dump"              # capture statistics
MANIFEST = "manifest.json"             # thaw: fingerprint, checksums, provenance
INVENTORY = os.path.join(CHECKPOINT_DIR, "inventory.img")  # CRIU writes it last: a cheap completeness check
DUMP_LOG = "dump.log"
RESTORE_LOG = "restore.log"


def read_json(path: str) -> Any:
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def write_json(path: str, value: Any, mode: int = 0o600) -> None:
    """Write atomically: a reader sees the old file or the new one, never a part."""
    directory = os.path.dirname(path) or "."
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=directory)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(value, f, indent=2, sort_keys=True)
            f.write("\n")
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
