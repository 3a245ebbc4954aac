"""Snapshots from the store to registries: `rewarm push`, and push after an on-ready capture
(`rewarm.dev/push: on-capture`).

The entry's checksums are verified first (a corrupt snapshot is never published), under the
store's read lock. Blobs the registry has already (unchanged pieces of an earlier push, under any
tag) are not sent again. The tag moves only when every blob is in: a failed push leaves the tag
where it was.
"""
from __future__ import annotations

import json
import os
import shutil
import uuid
from dataclasses import dataclass
from typing import TextIO

from runtime.adapters import archive, logs, store
from runtime.adapters.files import read_json
from runtime.adapters.registry import cosign, crio, native, ocicrypt, transfer
from runtime.adapters.registry.client import Client
from runtime.adapters.progress import Progress
from runtime.engine.pull import client_for
from runtime.model import layout, registry_ref
from runtime.model.errors import RegistryError, RewarmError
from runtime.model.events import EventKind
from runtime.model.settings import Settings


@dataclass
class Pushed:
    entry: store.Entry
    ref: str
    digest: str
    progress: Progress


def push(settings: Settings, name: str, ref_text: str, namespace: str = "default", fmt: str = "native",
         plain_http: bool = False, stream: TextIO | None = None, quiet: bool = False) -> Pushed:
    ref = registry_ref.parse(ref_text)
    try:
        if not ref.tag or ref.digest:
            raise RegistryError(f"push needs a tag to move, not a digest: {ref}")
        result = _push(settings, name, namespace, ref, fmt, plain_http, stream, quiet)
    except RewarmError as e:
        logs.event(settings.event_log, EventKind.PUSH_FAILED, namespace=namespace, snapshot=name, ref=str(ref),
                   reason=str(e))
        raise
    result.progress.finish()   # the clock stops once the tag is moved
    logs.event(settings.event_log, EventKind.PUSHED, namespace=namespace, snapshot=name, ref=str(ref),
               digest=result.digest, entry=result.entry.ident, bytes=result.progress.moved,
               skipped_bytes=result.progress.skipped, seconds=round(result.progress.seconds(), 3))
    return result


def _push(settings: Settings, name: str, namespace: str, ref: registry_ref.Reference, fmt: str, plain_http: bool,
          stream: TextIO | None, quiet: bool) -> Pushed:
    st = store.Store(settings.store)
    entries = st.entries(namespace, name)
    if not entries:
        raise RegistryError(f"no snapshot {namespace}/{name} to push")
    entry = entries[0]
    client = client_for(settings, ref, plain_http)
    assert ref.tag is not None
    with st.reading(namespace, name):
        if not os.path.isdir(entry.path):
            raise RegistryError(f"snapshot {namespace}/{name} was replaced while the push began; push again")
        store.verify(entry, deep=True)
        recipients = ocicrypt.load_keys(settings.encrypt_recipients, "encryption recipient")
        signer = cosign.load_private(settings.sign_key_file) if settings.sign_key_file else None
        if fmt == "crio":
            digest, progress = _checkpoint_image(settings, client, st, entry, ref.tag, recipients, stream, quiet)
        else:
            digest, progress = _native(settings, client, entry, ref.tag, recipients, stream, quiet)
    if signer is not None:
        cosign.sign(client, digest, signer)
    return Pushed(entry, str(ref), digest, progress)


def _native(settings: Settings, client: Client, entry: store.Entry, tag: str, recipients: list[ocicrypt.Key],
            stream: TextIO | None, quiet: bool) -> tuple[str, Progress]:
    pieces = native.split(entry.manifest.files)
    progress = Progress("push", entry.size(), stream, quiet)
    try:
        pieces = transfer.upload(client, entry.path, pieces, settings.transfer_threads, progress, recipients)
    except BaseException:
        progress.finish()
        raise
    with open(entry.file(layout.MANIFEST), "rb") as f:
        config = f.read()
    config_digest = transfer.put_config(client, config)
    m = native.manifest({"mediaType": native.CONFIG_TYPE, "digest": config_digest, "size": len(config)}, pieces,
                        {"dev.rewarm.snapshot.name": entry.name, "dev.rewarm.snapshot.namespace": entry.namespace,
                         "org.opencontainers.image.created": entry.manifest.created})
    return client.put_manifest(m, tag), progress


def _checkpoint_image(settings: Settings, client: Client, st: store.Store, entry: store.Entry, tag: str,
                      recipients: list[ocicrypt.Key], stream: TextIO | None, quiet: bool) -> tuple[str, Progress]:
    """One layer: the entry as a checkpoint archive (uncompressed: page images do not shrink much,
    and the layer's digest is then its diff id)."""
    work = os.path.join(st.root, "tmp", f"push-{uuid.uuid4().hex}")
    os.makedirs(work, mode=0o700)
    try:
        layer_path = os.path.join(work, "layer.tar")
        archive.pack(entry.path, layer_path, skip=store.BOOKKEEPING)
        size = os.path.getsize(layer_path)
        layer = native.Piece("layer.tar", 0, size, "sha256:" + store.sha256_file(layer_path))
        progress = Progress("push", size, stream, quiet)
        try:
            (layer,) = transfer.upload(client, work, [layer], 1, progress, recipients)
        except BaseException:
            progress.finish()
            raise
        config = _json_bytes(crio.image_config(layer.digest))   # the diff id: the plaintext's digest
        config_digest = transfer.put_config(client, config)
        dump = _config_dump(entry)
        name = str(dump.get("name") or entry.name)
        descriptor = {"mediaType": crio.LAYER_TAR, "digest": layer.blob, "size": size}
        if layer.sealed:
            descriptor.update(mediaType=crio.LAYER_TAR + ocicrypt.SUFFIX, annotations=dict(layer.sealed.annotations))
        m = crio.manifest({"mediaType": crio.OCI_CONFIG, "digest": config_digest, "size": len(config)},
                          descriptor, crio.checkpoint_annotations(name, dump, os.path.basename(settings.runtime)))
        return client.put_manifest(m, tag), progress
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _config_dump(entry: store.Entry) -> dict[str, object]:
    try:
        dump = read_json(entry.file(layout.CONFIG_DUMP))
    except (OSError, ValueError):
        return {}
    return dump if isinstance(dump, dict) else {}


def _json_bytes(value: object) -> bytes:
    return json.dumps(value, separators=(",", ":"), sort_keys=True).encode()
