"""Checkpoint images as CRI-O and Podman write and read them (`podman container checkpoint
--create-image`, CRI-O's restore from an image): an ordinary OCI image of one layer whose files are
the checkpoint archive's (checkpoint/, config.dump, spec.dump, rootfs-diff.tar, ...), marked by
manifest annotations: CRI-O looks for `io.kubernetes.cri-o.annotations.checkpoint.name`, Podman for
`io.podman.annotations.checkpoint.name`; both name the image the container ran
(`.rootfsImageName`, `.rootfsImageID`), which must exist where it is restored."""
from __future__ import annotations

from typing import Any, Mapping

from runtime.model import clock
from runtime.registry.media_types import DOCKER_LAYER_GZIP, OCI_LAYER_TAR, OCI_MANIFEST

CRIO_PREFIX = "io.kubernetes.cri-o.annotations.checkpoint."
PODMAN_PREFIX = "io.podman.annotations.checkpoint."
LAYER_TAR = OCI_LAYER_TAR
LAYER_TYPES = (LAYER_TAR, LAYER_TAR + "+gzip", LAYER_TAR + "+zstd", DOCKER_LAYER_GZIP)


def is_checkpoint_image(manifest: Mapping[str, Any]) -> bool:
    notes = manifest.get("annotations") or {}
    return isinstance(notes, dict) and any(k in notes for k in (CRIO_PREFIX + "name", PODMAN_PREFIX + "name"))


def checkpoint_annotations(container_name: str, config_dump: Mapping[str, Any], runtime: str) -> dict[str, str]:
    """Both projects' annotations, from the checkpoint's config.dump where it knows the image. Podman
    restores an image only when `.runtime.name` names its own OCI runtime."""
    known = {"name": container_name,
             "rootfsImageName": str(config_dump.get("rootfsImageName") or config_dump.get("RawImageName") or ""),
             "rootfsImageID": str(config_dump.get("rootfsImageID") or config_dump.get("rootfsImageRef") or "")}
    if config_dump.get("RawImageName"):
        known["rawImageName"] = str(config_dump["RawImageName"])
    notes = {prefix + k: v for prefix in (CRIO_PREFIX, PODMAN_PREFIX) for k, v in known.items() if v}
    notes[PODMAN_PREFIX + "runtime.name"] = str(config_dump.get("runtime") or runtime)
    return notes


def image_config(layer_diff_id: str, created: str = "") -> dict[str, Any]:
    """An image config for the one layer (uncompressed: its digest is its diff id), made at `created`
    (RFC 3339; now when not given)."""
    return {"created": created or clock.rfc3339(), "architecture": "amd64",
            "os": "linux", "config": {}, "rootfs": {"type": "layers", "diff_ids": [layer_diff_id]},
            "history": [{"created_by": "rewarm push --format crio"}]}


def manifest(config: Mapping[str, Any], layer: Mapping[str, Any], notes: Mapping[str, str]) -> dict[str, Any]:
    return {"schemaVersion": 2, "mediaType": OCI_MANIFEST, "config": dict(config), "layers": [dict(layer)],
            "annotations": dict(notes)}


def the_layer(manifest: Mapping[str, Any]) -> dict[str, Any] | None:
    """The checkpoint layer of a checkpoint image, or None when it is not one layer of a known type."""
    layers = manifest.get("layers")
    if not isinstance(layers, list) or len(layers) != 1 or not isinstance(layers[0], dict):
        return None
    layer = layers[0]
    media = str(layer.get("mediaType", "")).removesuffix("+encrypted")   # ocicrypt's layout (ocicrypt.py)
    ok = media in LAYER_TYPES and isinstance(layer.get("digest"), str) \
        and isinstance(layer.get("size"), int)
    return layer if ok else None
