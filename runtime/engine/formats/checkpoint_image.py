"""The CRI-O / Podman checkpoint image (the wire format is registry/crio.py): one
uncompressed layer, the entry as a checkpoint archive (page images do not shrink much, and the
layer's digest is then its diff id). A pull takes the archive in as `rewarm import` does."""
from __future__ import annotations

import json
import os
import shutil
import uuid
from typing import Any, Mapping

from runtime.snapshot import archive, store
from runtime.host.files import owned_dir, read_json
from runtime.observe.progress import Progress
from runtime.registry import crio, media_types, native, ocicrypt, transfer
from runtime.engine.formats.base import Staging, Transfer, check_room, decryption_keys, recipients
from runtime.model import layout
from runtime.model.errors import RegistryError
from runtime.model.fingerprint import Fingerprint


class CheckpointImage:
    name = "crio"

    def recognises(self, oci_manifest: Mapping[str, Any]) -> bool:
        return crio.is_checkpoint_image(oci_manifest)

    def push(self, t: Transfer, entry: store.Entry, tag: str,
             notes: Mapping[str, str]) -> tuple[dict[str, Any], Progress]:
        work = os.path.join(store.Store(t.settings.store).root, "tmp", f"push-{uuid.uuid4().hex}")
        owned_dir(work)   # named as this process's: gc leaves a live push alone
        try:
            layer_path = os.path.join(work, "layer.tar")
            archive.pack(entry.path, layer_path, skip=store.BOOKKEEPING)
            size = os.path.getsize(layer_path)
            layer = native.Piece("layer.tar", 0, size, "sha256:" + store.sha256_file(layer_path))
            progress = t.progress("push", size)
            with progress.stopped_on_failure():
                (layer,) = transfer.upload(t.client, work, [layer], progress, recipients(t))
            # the diff id is the plaintext's digest; the capture's time, not the push's: a push
            # of the same entry again makes the same manifest
            config = _json_bytes(crio.image_config(layer.digest, entry.manifest.created))
            config_digest = transfer.put_config(t.client, config)
            dump = _config_dump(entry)
            descriptor = {"mediaType": crio.LAYER_TAR, "digest": layer.blob, "size": size}
            if layer.sealed:
                descriptor.update(mediaType=crio.LAYER_TAR + ocicrypt.SUFFIX, annotations=dict(layer.sealed.annotations))
            checkpoint_notes = crio.checkpoint_annotations(str(dump.get("name") or entry.name), dump,
                                                os.path.basename(t.settings.runtime))
            m = crio.manifest({"mediaType": media_types.OCI_CONFIG, "digest": config_digest, "size": len(config)},
                              descriptor, {**checkpoint_notes, **notes})
            return t.client.put_manifest(m, tag), progress
        finally:
            shutil.rmtree(work, ignore_errors=True)

    def fingerprint(self, t: Transfer, oci_manifest: Mapping[str, Any]) -> Fingerprint | None:
        return None   # it is in the layer (a checkpoint archive), CRI-O's and Podman's pushes have none at all

    def pull(self, t: Transfer, oci_manifest: Mapping[str, Any], into: Staging) -> tuple[store.Entry, Progress]:
        from runtime.engine import archives
        layer = crio.the_layer(oci_manifest)
        if layer is None:
            raise RegistryError(f"{t.client.ref}: a checkpoint image must have one tar layer")
        digest, sealed = (ocicrypt.unseal(layer, decryption_keys(t, oci_manifest)) if ocicrypt.is_sealed(layer)
                          else (layer["digest"], None))
        piece = native.Piece("layer.tar", 0, layer["size"], digest, sealed=sealed)
        check_room(t, into.path, piece.size)
        progress = t.progress("pull", piece.size)
        with progress.stopped_on_failure():
            transfer.download(t.client, into.path, [piece], progress, into.resume, t.settings.pull_stall_s)
        entry = archives.import_archive(t.settings, os.path.join(into.path, piece.path), into.name, into.namespace,
                                        dict(into.origin))
        shutil.rmtree(into.path, ignore_errors=True)
        return entry, progress


def _config_dump(entry: store.Entry) -> dict[str, object]:
    try:
        dump = read_json(entry.file(layout.CONFIG_DUMP))
    except (OSError, ValueError):
        return {}
    return dump if isinstance(dump, dict) else {}


def _json_bytes(value: object) -> bytes:
    return json.dumps(value, separators=(",", ":"), sort_keys=True).encode()


CHECKPOINT_IMAGE = CheckpointImage()
