"""The pod's /dev/shm where the runtime binds it in from the host: containerd's CRI gives every
container of a pod the sandbox's shm, a tmpfs of the host. CRIU leaves such an external mount out
of a snapshot, so the files a worker keeps there (POSIX shared memory such as Python's
`SharedMemory`, named semaphores) would be missing in the restoring pod and CRIU could not open
them. They travel beside the snapshot (dev-shm.tar, the rootfs diff's format) and are laid into the
restoring pod's /dev/shm before CRIU runs, with the same checks and undo. A /dev/shm that the
container's spec mounts as tmpfs of its own is CRIU's to dump, and needs nothing here.
"""
from __future__ import annotations

import os

from runtime.snapshot import rootfs_diff
from runtime.model.oci_spec import Spec, bind_mount_of

DESTINATION = "/dev/shm"


def host_dir(spec: Spec) -> str | None:
    """The host directory bound at the container's /dev/shm, if the runtime binds one."""
    found = bind_mount_of(spec, DESTINATION)
    if found is None or found[1] != ".":
        return None
    return found[0] if os.path.isdir(found[0]) else None


def write(spec: Spec, tar_path: str) -> int:
    """Tar the files of the container's bound /dev/shm into tar_path (bytes written; 0 and no file
    when it has no bound /dev/shm or nothing in it)."""
    source = host_dir(spec)
    if source is None or not os.listdir(source):
        return 0
    deleted = tar_path + ".deleted"   # always empty: a tmpfs has no whiteouts
    size, _ = rootfs_diff.write(source, tar_path, deleted)
    os.unlink(deleted)
    return size


def lay(spec: Spec, tar_path: str, backup_dir: str) -> rootfs_diff.Patch | None:
    """Lay the files into the restoring container's bound /dev/shm; None where it has none (the
    restore then fails in CRIU, with CRIU's reason, as it would without them)."""
    target = host_dir(spec)
    if target is None:
        return None
    no_deletions = os.path.join(backup_dir, "none")   # a diff without deleted.files deletes nothing
    return rootfs_diff.apply(target, tar_path, no_deletions, backup_dir)
