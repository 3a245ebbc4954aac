"""Where things are: the files of a snapshot (the checkpoint-archive layout of CRI-O and Podman,
so their tools can read rewarm's snapshots, plus rewarm's manifest.json) and rewarm's node paths."""
from __future__ import annotations

import os

CHECKPOINT_DIR = "checkpoint"          # CRIU images (inventory.img, pages-*.img, ...)
CONFIG_DUMP = "config.dump"            # container facts at capture (id, name, image, time)
SPEC_DUMP = "spec.dump"                # the OCI runtime spec (config.json) of the captured container
ROOTFS_DIFF = "rootfs-diff.tar"        # files the container changed in its rootfs
DELETED_FILES = "deleted.files"        # JSON list of paths the container deleted from its rootfs
DEV_SHM = "dev-shm.tar"                # rewarm: files of a /dev/shm bound in from the host (snapshot/dev_shm.py)
STATS_DUMP = "stats-dump"              # capture statistics
MANIFEST = "manifest.json"             # rewarm: fingerprint, checksums, provenance
INVENTORY = os.path.join(CHECKPOINT_DIR, "inventory.img")  # CRIU writes it last: a cheap completeness check
DUMP_LOG = "dump.log"
RESTORE_LOG = "restore.log"
PRESTART = "prestart.json"   # in a restore's work dir: what rewarm-hook prestart prepares (oci_hooks/main.py)

RUN_DIR = "/run/rewarm"                # per-container work files (tmpfs: gone after a reboot)


WORK_ROOT = os.path.join(RUN_DIR, "work")


def work_dir(runtime_root: str, container_id: str) -> str:
    """A restore's work dir for one container of one runtime root; rewarm-hook poststop removes it."""
    return os.path.join(WORK_ROOT, runtime_root.strip("/").replace("/", "_"), container_id)
