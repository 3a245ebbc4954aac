"""The registry formats of a snapshot, one module each behind `base.Format`: rewarm's native
artifact (native.py: one blob per file piece, resumable, deduplicated) and the CRI-O / Podman
checkpoint image (checkpoint_image.py: one layer, a checkpoint archive)."""
from __future__ import annotations

from typing import Any, Mapping

from runtime.engine.formats.base import Caller, Format, Staging, Transfer
from runtime.engine.formats.checkpoint_image import CHECKPOINT_IMAGE
from runtime.engine.formats.native import NATIVE
from runtime.model.errors import RegistryError

FORMATS: dict[str, Format] = {f.name: f for f in (NATIVE, CHECKPOINT_IMAGE)}

__all__ = ["Caller", "FORMATS", "Format", "Staging", "Transfer", "detect", "recognised"]


def detect(oci_manifest: Mapping[str, Any], what: str) -> Format:
    """The format a registry's manifest is in; `what` names it in the refusal."""
    found = recognised(oci_manifest)
    if found is None:
        raise RegistryError(f"{what} is neither a rewarm snapshot nor a CRI-O / Podman checkpoint image")
    return found


def recognised(oci_manifest: Mapping[str, Any]) -> Format | None:
    """The format a registry's manifest is in, or None for anything else."""
    return next((f for f in FORMATS.values() if f.recognises(oci_manifest)), None)
