"""rewarm's native snapshot artifact: an OCI image manifest whose config is the entry's
manifest.json and whose layers are the entry's files, one blob per file, files above CHUNK_BYTES
cut into CHUNK_BYTES pieces.

    mediaType     application/vnd.oci.image.manifest.v1+json
    artifactType  application/vnd.rewarm.snapshot.v1
    config        application/vnd.rewarm.snapshot.manifest.v1+json   (manifest.json, config/manifest.schema.json)
    layers        application/vnd.rewarm.snapshot.file.v1            a whole file
                  application/vnd.rewarm.snapshot.chunk.v1           a piece of one
                  annotations dev.rewarm.snapshot.path (file in the entry), dev.rewarm.snapshot.offset

Why 32 MiB pieces: a registry request costs about a millisecond here, so at 1 GB/s a 32 MiB blob
spends 3% of its time on overhead; a 1 GB snapshot gives 32 pieces for 8 transfers at once; a push
holds one piece per thread in memory (256 MiB for 8); a killed pull loses at most one piece per
thread; and a page image that changed in one region of a recapture shares all other pieces with
the one before it, so the registry keeps (and a push uploads) only the pieces that changed. The
size is part of the format: changing it would stop pieces of older pushes from matching.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

from runtime.registry import ocicrypt
from runtime.model.errors import RegistryError
from runtime.model.manifest import FileDigest
from runtime.registry.media_types import OCI_MANIFEST

ARTIFACT_TYPE = "application/vnd.rewarm.snapshot.v1"
CONFIG_TYPE = "application/vnd.rewarm.snapshot.manifest.v1+json"
FILE_TYPE = "application/vnd.rewarm.snapshot.file.v1"
CHUNK_TYPE = "application/vnd.rewarm.snapshot.chunk.v1"
PATH_KEY = "dev.rewarm.snapshot.path"
OFFSET_KEY = "dev.rewarm.snapshot.offset"
TITLE_KEY = "org.opencontainers.image.title"
CHUNK_BYTES = 32 << 20
MAX_PIECES = 100_000


@dataclass(frozen=True)
class Piece:
    """One blob: a whole file of the entry (offset 0, its full size) or a piece of one."""
    path: str
    offset: int
    size: int
    digest: str = ""        # sha256:HEX of the content; "" for a chunk whose digest the push has not computed yet
    whole: bool = True
    sealed: ocicrypt.Sealed | None = None   # an encrypted blob (ocicrypt's layout): its own digest and keys

    @property
    def blob(self) -> str:
        """The registry's name of the blob: the content's digest, or the ciphertext's."""
        return self.sealed.blob if self.sealed else self.digest

    def descriptor(self) -> dict[str, Any]:
        annotations = {PATH_KEY: self.path, OFFSET_KEY: str(self.offset)}
        if self.whole:
            annotations[TITLE_KEY] = self.path   # what `oras pull` names the file
        media = FILE_TYPE if self.whole else CHUNK_TYPE
        if self.sealed:
            media += ocicrypt.SUFFIX
            annotations.update(self.sealed.annotations)
        return {"mediaType": media, "digest": self.blob, "size": self.size, "annotations": annotations}


def split(files: Mapping[str, FileDigest]) -> list[Piece]:
    """The blobs of an entry's files: whole files keep the sha256 the manifest records."""
    pieces = []
    for path, f in sorted(files.items()):
        if f.size <= CHUNK_BYTES:
            pieces.append(Piece(path, 0, f.size, f"sha256:{f.sha256}"))
        else:
            pieces += [Piece(path, off, min(CHUNK_BYTES, f.size - off), "", False)
                       for off in range(0, f.size, CHUNK_BYTES)]
    return pieces


def manifest(config: Mapping[str, Any], pieces: list[Piece], annotations: Mapping[str, str]) -> dict[str, Any]:
    return {"schemaVersion": 2, "mediaType": OCI_MANIFEST, "artifactType": ARTIFACT_TYPE,
            "config": dict(config), "layers": [p.descriptor() for p in pieces], "annotations": dict(annotations)}


def is_native(oci_manifest: Mapping[str, Any]) -> bool:
    config = oci_manifest.get("config")
    return isinstance(config, dict) and config.get("mediaType") == CONFIG_TYPE


def is_sealed(oci_manifest: Mapping[str, Any]) -> bool:
    layers = oci_manifest.get("layers")
    return isinstance(layers, list) and any(isinstance(x, dict) and ocicrypt.is_sealed(x) for x in layers)


def pieces_of(oci_manifest: Mapping[str, Any],
              keys: Sequence[ocicrypt.Key] = ()) -> tuple[dict[str, Any], list[Piece]]:
    """The config descriptor and the pieces named by a pulled manifest, each field checked;
    encrypted pieces are opened with one of `keys`."""
    config, layers = config_of(oci_manifest), oci_manifest.get("layers")
    if not isinstance(layers, list):
        raise RegistryError("not a rewarm snapshot (it has no list of layers)")
    if len(layers) > MAX_PIECES:
        raise RegistryError(f"snapshot has more than {MAX_PIECES} blobs")
    pieces = []
    for layer in layers:
        _descriptor(layer, "layer")
        notes = layer.get("annotations") or {}
        media = str(layer.get("mediaType"))
        digest, sealed = layer["digest"], None
        if ocicrypt.is_sealed(layer):
            media = media[:-len(ocicrypt.SUFFIX)]
            digest, sealed = ocicrypt.unseal(layer, keys)
            _descriptor({"digest": digest, "size": 0}, "encrypted layer's content")
        if media not in (FILE_TYPE, CHUNK_TYPE) or not isinstance(notes, dict):
            raise RegistryError(f"layer {layer.get('digest')}: unexpected media type {layer.get('mediaType')!r}")
        try:
            offset = int(notes.get(OFFSET_KEY, "0"))
        except ValueError as e:
            raise RegistryError(f"layer {layer['digest']}: offset {notes.get(OFFSET_KEY)!r} is not a number") from e
        pieces.append(Piece(safe_path(str(notes.get(PATH_KEY, ""))), offset, layer["size"], digest,
                            media == FILE_TYPE, sealed))
    return config, pieces


def config_of(oci_manifest: Mapping[str, Any]) -> dict[str, Any]:
    """The descriptor of a native manifest's config (rewarm's manifest.json), checked."""
    config = oci_manifest.get("config")
    if not is_native(oci_manifest) or not isinstance(config, dict):
        raise RegistryError("not a rewarm snapshot (config media type is not " + CONFIG_TYPE + ")")
    _descriptor(config, "config")
    return config


def check_against(pieces: list[Piece], files: Mapping[str, FileDigest]) -> None:
    """The pieces cover every file of the manifest exactly, in order, and nothing else; a whole
    file's blob is the file, so its digest must be the sha256 the manifest records."""
    by_path: dict[str, list[Piece]] = {}
    for p in pieces:
        by_path.setdefault(p.path, []).append(p)
    extra = sorted(set(by_path) - set(files))
    missing = sorted(set(files) - set(by_path))
    if extra or missing:
        raise RegistryError(f"layers and manifest.json disagree: {'no file ' + extra[0] if extra else ''}"
                            f"{'no layer for ' + missing[0] if missing else ''}")
    for path, parts in by_path.items():
        parts.sort(key=lambda p: p.offset)
        expected = 0
        for p in parts:
            if p.offset != expected or p.size < 0:
                raise RegistryError(f"layers of {path} leave a gap or overlap at byte {expected}")
            expected += p.size
        if expected != files[path].size:
            raise RegistryError(f"layers of {path} hold {expected} bytes, manifest.json says {files[path].size}")
        if len(parts) == 1 and parts[0].digest != f"sha256:{files[path].sha256}":
            raise RegistryError(f"layer of {path} is not the file manifest.json describes (digest differs)")


def safe_path(path: str) -> str:
    """A file name inside the entry: relative, normalised, no `..`, not rewarm's bookkeeping."""
    norm = os.path.normpath(path) if path else ""
    if not path or path.startswith("/") or norm != path or norm.startswith("..") or "\0" in path \
            or os.path.basename(norm).startswith("."):
        raise RegistryError(f"layer path {path!r} would land outside the snapshot or is not a plain name")
    return norm


def _descriptor(d: Any, what: str) -> None:
    if not isinstance(d, dict) or not isinstance(d.get("digest"), str) or not isinstance(d.get("size"), int) \
            or not d["digest"].startswith("sha256:") or len(d["digest"]) != 71 or d["size"] < 0:
        raise RegistryError(f"{what} descriptor is malformed: {str(d)[:200]}")
