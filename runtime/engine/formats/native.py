"""rewarm's native artifact (the wire format is registry/native.py): the entry's
manifest.json as the config, its files as blobs of up to 32 MiB. A push sends only the pieces the
registry lacks; a pull checks the pieces against the pushed manifest and resumes a kept part."""
from __future__ import annotations

import dataclasses
import json
from typing import Any, Mapping

from runtime.snapshot import store
from runtime.observe.progress import Progress
from runtime.registry import native, transfer
from runtime.engine.formats.base import Staging, Transfer, check_room, decryption_keys, recipients, refuse_foreign
from runtime.model import layout
from runtime.model.errors import InvalidInput, RegistryError, SnapshotDamaged
from runtime.model.fingerprint import Fingerprint
from runtime.model.manifest import Manifest


class Native:
    name = "native"

    def recognises(self, oci_manifest: Mapping[str, Any]) -> bool:
        return native.is_native(oci_manifest)

    def push(self, t: Transfer, entry: store.Entry, tag: str,
             notes: Mapping[str, str]) -> tuple[dict[str, Any], Progress]:
        progress = t.progress("push", entry.size())
        with progress.stopped_on_failure():
            pieces = transfer.upload(t.client, entry.path, native.split(entry.manifest.files), progress, recipients(t))
        with open(entry.file(layout.MANIFEST), "rb") as f:
            config = f.read()
        config_digest = transfer.put_config(t.client, config)
        m = native.manifest({"mediaType": native.CONFIG_TYPE, "digest": config_digest, "size": len(config)}, pieces,
                            {"dev.rewarm.snapshot.name": entry.name, "dev.rewarm.snapshot.namespace": entry.namespace,
                             "org.opencontainers.image.created": entry.manifest.created, **notes})
        return t.client.put_manifest(m, tag), progress

    def fingerprint(self, t: Transfer, oci_manifest: Mapping[str, Any]) -> Fingerprint:
        return _pushed(t, native.config_of(oci_manifest)).fingerprint

    def pull(self, t: Transfer, oci_manifest: Mapping[str, Any], into: Staging) -> tuple[store.Entry, Progress]:
        ref = t.client.ref
        config, pieces = native.pieces_of(oci_manifest, decryption_keys(t, oci_manifest))
        pushed = _pushed(t, config)
        reserved = sorted(set(pushed.files) & store.NOT_CONTENT)
        if reserved:
            raise RegistryError(f"{ref}: manifest.json lists rewarm's own file {reserved[0]}")
        native.check_against(pieces, pushed.files)
        refuse_foreign(t, pushed, into.namespace)   # before a byte of its memory is fetched
        total = sum(p.size for p in pieces)
        check_room(t, into.path, total)
        progress = t.progress("pull", total)
        with progress.stopped_on_failure():
            transfer.download(t.client, into.path, pieces, progress, into.resume, t.settings.pull_stall_s)
        manifest = dataclasses.replace(pushed, namespace=into.namespace, name=into.name,
                                       source={**pushed.source, **into.origin},
                                       capture=dataclasses.replace(pushed.capture, namespace=pushed.captured_in))
        try:
            return into.store.commit_pulled(into.path, manifest), progress
        except (SnapshotDamaged, InvalidInput) as e:
            raise RegistryError(f"{ref}: {e}") from e


def _pushed(t: Transfer, config: Mapping[str, Any]) -> Manifest:
    """The pushing node's manifest.json, the manifest's config: checked against its digest and the schema."""
    raw = transfer.fetch_bytes(t.client, config["digest"], config["size"])
    try:
        return Manifest.from_json(json.loads(raw))
    except (InvalidInput, ValueError, TypeError, KeyError) as e:
        raise RegistryError(f"{t.client.ref}: its manifest.json is not valid: {e}") from e


NATIVE = Native()
