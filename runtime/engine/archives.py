"""`rewarm import` and `rewarm export`: checkpoint archives of CRI-O's and Podman's layout in and out
of the store (with encrypt_recipients, an export is an OCI archive of it, encrypted; an import
decrypts one with decryption_keys). An import is unpacked into the store's staging area, checked (complete CRIU images,
a readable spec), fingerprinted for this node, and appears with the store's one rename, or not at all."""
from __future__ import annotations

import os
from typing import Any, Mapping

from runtime.snapshot import archive, rootfs_diff, store
from runtime.host.files import read_json
from runtime.registry import crio, oci_archive, ocicrypt
from runtime.engine import fingerprinting, warm
from runtime.model import clock, layout, oci_spec
from runtime.model import annotations as ann
from runtime.model.errors import ArchiveError, InvalidInput, UnsafeRootfsDiff
from runtime.model.manifest import CaptureInfo, Manifest, RootfsInfo
from runtime.model.names import validate_name, validate_namespace
from runtime.model.settings import Settings


def _read_dumps(archive_path: str, staging: str) -> tuple[oci_spec.Spec, dict[str, Any]]:
    for required in (layout.INVENTORY, layout.SPEC_DUMP):
        if not os.path.isfile(os.path.join(staging, required)):
            raise ArchiveError(f"{archive_path}: no {required}: not a complete checkpoint archive")
    try:
        spec = read_json(os.path.join(staging, layout.SPEC_DUMP))
        config_path = os.path.join(staging, layout.CONFIG_DUMP)
        config = read_json(config_path) if os.path.exists(config_path) else {}
    except ValueError as e:
        raise ArchiveError(f"{archive_path}: spec.dump or config.dump is not JSON ({e})") from e
    if not isinstance(spec, dict) or not isinstance(spec.get("process"), dict) or not isinstance(config, dict):
        raise ArchiveError(f"{archive_path}: spec.dump is not an OCI runtime spec")
    return oci_spec.parsed(spec), config


def _captured_in(archive_path: str, spec: oci_spec.Spec, namespace: str) -> str:
    """The Kubernetes namespace the archive's container ran in, where its spec names one (a pod's,
    checkpointed by CRI-O or kubelet); a container of no namespace (Podman's) belongs to the one
    it is imported into."""
    annotations = oci_spec.annotations_of(spec)
    if not ann.names_namespace(annotations):
        return namespace
    try:
        return ann.namespace_of(annotations)
    except InvalidInput as e:
        raise ArchiveError(f"{archive_path}: {e}") from e


IMPORT_SPARE = 64 << 20


def _unpack_limit(settings: Settings, archive_path: str, staging: str) -> int:
    """At most import_max_ratio times the archive's size, and what the store's disk can take."""
    st = os.statvfs(staging)
    return min(os.path.getsize(archive_path) * settings.import_max_ratio,
               st.f_bavail * st.f_frsize - IMPORT_SPARE)


def import_archive(settings: Settings, archive_path: str, name: str, namespace: str,
                   origin: Mapping[str, str] | None = None) -> store.Entry:
    """`origin`: provenance added to the manifest's source (a pull names its reference and digest)."""
    validate_name(name)
    validate_namespace(namespace)
    st = store.Store(settings.store).ensure()
    with st.capturing(namespace, name), st.staging() as staging:
        archive.unpack(archive_path, staging, skip=store.NOT_CONTENT, max_bytes=_unpack_limit(settings, archive_path, staging))
        spec, config = _read_dumps(archive_path, staging)
        tar_path, deleted_path = os.path.join(staging, layout.ROOTFS_DIFF), os.path.join(staging, layout.DELETED_FILES)
        archive.write_empty_diff(tar_path, deleted_path)
        try:
            rootfs_diff.check(tar_path, deleted_path)
        except UnsafeRootfsDiff as e:
            raise ArchiveError(f"{archive_path}: {e}") from e
        fp = fingerprinting.of_container(spec, settings)
        images = os.path.join(staging, layout.CHECKPOINT_DIR)
        deleted = read_json(deleted_path)
        manifest = Manifest(
            namespace=namespace, name=name, created=clock.rfc3339(),
            fingerprint=fp, fingerprint_id=fp.ident(),
            source={"container_id": str(config.get("id") or spec.get("hostname") or "imported"),
                    "imported_from": os.path.basename(archive_path), **(origin or {})},
            rootfs=RootfsInfo("imported", os.path.getsize(tar_path), len(deleted) if isinstance(deleted, list) else 0),
            capture=CaptureInfo(checkpoint_bytes=sum(os.path.getsize(os.path.join(images, f)) for f in os.listdir(images)),
                                namespace=_captured_in(archive_path, spec, namespace)),
            annotations={"org.criu.checkpoint.engine": str(config.get("runtimeName") or "imported"),
                         "org.criu.checkpoint.kernel": fp.kernel, "org.criu.checkpoint.arch": fp.arch})
        why = manifest.unreadable_from((namespace, *settings.shared_namespaces))
        if why:
            raise ArchiveError(f"{archive_path} is not imported into namespace {namespace}: {why}")
        entry = st.commit(staging, manifest)
    warm.after(settings, "import", entry)
    return entry


def export_archive(settings: Settings, name: str, namespace: str, archive_path: str) -> store.Entry:
    """Write the newest entry of (namespace, name), checksums verified first, as a checkpoint
    archive; with encrypt_recipients, as an OCI archive of it encrypted to them (oci_archive.py)."""
    st = store.Store(settings.store)
    entries = st.entries(namespace, name)
    if not entries:
        raise ArchiveError(f"no snapshot {namespace}/{name}")
    entry = entries[0]
    recipients = ocicrypt.load_keys(settings.encrypt_recipients, "encryption recipient")
    with st.reading(namespace, name):
        store.verify(entry, deep=True)
        if not recipients:
            archive.pack(entry.path, archive_path, skip=store.BOOKKEEPING)
            return entry
        with st.staging() as work:
            plain = os.path.join(work, "checkpoint.tar")
            archive.pack(entry.path, plain, skip=store.BOOKKEEPING)
            dump = read_json(entry.file(layout.CONFIG_DUMP))
            notes = crio.checkpoint_annotations(str(dump.get("name") or entry.name) if isinstance(dump, dict)
                                                else entry.name, dump if isinstance(dump, dict) else {},
                                                os.path.basename(settings.runtime))
            oci_archive.write(plain, "sha256:" + store.sha256_file(plain), archive_path, work, recipients, notes)
    return entry


def import_any(settings: Settings, archive_path: str, name: str, namespace: str) -> store.Entry:
    """`rewarm import`: a checkpoint archive, or an encrypted OCI archive of one (decryption_keys)."""
    if not oci_archive.is_oci_archive(archive_path):
        return import_archive(settings, archive_path, name, namespace)
    keys = ocicrypt.load_keys(settings.decryption_keys, "decryption key")
    with store.Store(settings.store).ensure().staging() as work:
        plain = oci_archive.read(archive_path, keys, work)
        return import_archive(settings, plain, name, namespace,
                              {"imported_from": os.path.basename(archive_path), "encrypted": "ocicrypt"})
