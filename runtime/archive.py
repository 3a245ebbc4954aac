"""Checkpoint archives in the layout of CRI-O and Podman (`podman container checkpoint --export`):
import them into thaw's store, export thaw's snapshots as such archives.

An archive is an untrusted input: members must be plain files or directories with relative names
that stay inside the entry, the CRIU images must be complete (inventory.img) and the spec readable;
it is unpacked into the store's staging area and appears with the store's one rename, or not at all.
"""
from __future__ import annotations

import os
import shutil
import tarfile
import tempfile
import time
from runtime import annotations as ann
from runtime import fingerprint, gpu_inventory, layout, store
from runtime.errors import ThawError
from runtime.settings import Settings

MAX_MEMBERS = 100_000


class ArchiveError(ThawError):
    pass


def _safe_name(name: str) -> str:
    norm = os.path.normpath(name)
    if name.startswith("/") or norm == ".." or norm.startswith("../") or "\0" in name:
        raise ArchiveError(f"archive member {name!r} would land outside the snapshot")
    return norm


ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"   # Podman compresses its exports with zstd by default


def _open(archive: str) -> tarfile.TarFile:
    """A tar archive, plain, gzip, bzip2, xz or zstd, read as a stream."""
    try:
        with open(archive, "rb") as f:
            magic = f.read(4)
        if magic == ZSTD_MAGIC:
            import zstandard
            stream = zstandard.ZstdDecompressor().stream_reader(open(archive, "rb"), closefd=True)
            return tarfile.open(fileobj=stream, mode="r|")
        return tarfile.open(archive, "r|*")
    except (OSError, tarfile.TarError) as e:
        raise ArchiveError(f"{archive}: not a readable tar archive ({e})") from None


def _unpack(archive: str, dest: str) -> None:
    """Plain files and directories only (no links, devices or fifos), each created new."""
    try:
        with _open(archive) as tar:
            for i, member in enumerate(tar):
                if i >= MAX_MEMBERS:
                    raise ArchiveError(f"{archive}: more than {MAX_MEMBERS} members")
                name = _safe_name(member.name)
                if name in (".", layout.MANIFEST, store.VERIFIED_FILE, store.LAST_USED, store.OWNER_FILE):
                    continue  # thaw writes its own
                target = os.path.join(dest, name)
                if member.isdir():
                    os.makedirs(target, mode=0o700, exist_ok=True)
                elif member.isfile():
                    os.makedirs(os.path.dirname(target), mode=0o700, exist_ok=True)
                    with tar.extractfile(member) as source, open(target, "xb") as out:  # "x": no second copy
                        shutil.copyfileobj(source, out, 8 << 20)
                    os.chmod(target, 0o600)
                else:
                    raise ArchiveError(f"archive member {member.name!r} is not a plain file or directory")
    except FileExistsError as e:
        raise ArchiveError(f"{archive}: a member appears twice ({e.filename})") from None
    except (tarfile.TarError, OSError, EOFError) as e:
        raise ArchiveError(f"{archive}: broken archive ({e})") from None


def import_archive(settings: Settings, archive: str, name: str, namespace: str) -> store.Entry:
    ann.validate_name(name)
    ann.validate_name(namespace, "namespace")
    st = store.Store(settings.store).ensure()
    with st.capturing(namespace, name), st.staging() as staging:
        _unpack(archive, staging)
        for required in (layout.INVENTORY, layout.SPEC_DUMP):
            if not os.path.isfile(os.path.join(staging, required)):
                raise ArchiveError(f"{archive}: no {required}: not a complete checkpoint archive")
        try:
            spec = layout.read_json(os.path.join(staging, layout.SPEC_DUMP))
            config = layout.read_json(os.path.join(staging, layout.CONFIG_DUMP)) \
                if os.path.exists(os.path.join(staging, layout.CONFIG_DUMP)) else {}
        except ValueError as e:
            raise ArchiveError(f"{archive}: spec.dump or config.dump is not JSON ({e})") from None
        if not isinstance(spec, dict) or not isinstance(spec.get("process"), dict):
            raise ArchiveError(f"{archive}: spec.dump is not an OCI runtime spec")
        for path in (layout.ROOTFS_DIFF, layout.DELETED_FILES):
            if not os.path.exists(os.path.join(staging, path)):
                with open(os.path.join(staging, path), "w") as f:
                    f.write("[]" if path == layout.DELETED_FILES else "")
        if os.path.getsize(os.path.join(staging, layout.ROOTFS_DIFF)) == 0:
            with tarfile.open(os.path.join(staging, layout.ROOTFS_DIFF), "w"):
                pass
        fp = fingerprint.of_container(spec, env_ignore=settings.env_ignore, criu=settings.criu,
                                      runtime=settings.runtime, gpu=gpu_inventory.fingerprint_of_spec(spec))
        images = os.path.join(staging, layout.CHECKPOINT_DIR)
        now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        return st.commit(staging, {
            "schema_version": 1, "namespace": namespace, "name": name, "created": now,
            "fingerprint": fp.__dict__, "fingerprint_id": fp.ident(),
            "source": {"container_id": str(config.get("id") or spec.get("hostname") or "imported"),
                       "imported_from": os.path.basename(archive)},
            "rootfs": {"kind": "imported", "diff_bytes": os.path.getsize(os.path.join(staging, layout.ROOTFS_DIFF)),
                       "deleted": len(layout.read_json(os.path.join(staging, layout.DELETED_FILES)) or [])},
            "capture": {"seconds": 0, "checkpoint_seconds": 0, "leave_running": False,
                        "checkpoint_bytes": sum(os.path.getsize(os.path.join(images, f)) for f in os.listdir(images))},
            "files": {},
            "annotations": {"org.criu.checkpoint.engine": str(config.get("runtimeName") or "imported"),
                            "org.criu.checkpoint.kernel": fp.kernel, "org.criu.checkpoint.arch": fp.arch},
        })


def export_archive(settings: Settings, name: str, namespace: str, archive: str) -> store.Entry:
    """Write the newest entry of (namespace, name) as a checkpoint archive (gzip when the name ends
    in .gz / .tgz); the archive appears with one rename."""
    st = store.Store(settings.store)
    entries = st.entries(namespace, name)
    if not entries:
        raise ArchiveError(f"no snapshot {namespace}/{name}")
    entry = entries[0]
    mode = "w:gz" if archive.endswith((".gz", ".tgz")) else "w"
    directory = os.path.dirname(os.path.abspath(archive))
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=".thaw-export-")
    os.close(fd)
    try:
        with st.reading(namespace, name), tarfile.open(tmp, mode) as tar:
            store.verify(entry, deep=True)
            for item in sorted(os.listdir(entry.path)):
                if item not in (store.VERIFIED_FILE, store.LAST_USED):
                    tar.add(os.path.join(entry.path, item), arcname=item, filter=_plain)
        os.chmod(tmp, 0o600)
        os.replace(tmp, archive)
    except BaseException:
        os.unlink(tmp)
        raise
    return entry


def _plain(info: tarfile.TarInfo) -> tarfile.TarInfo:
    info.uid = info.gid = 0
    info.uname = info.gname = "root"
    return info

