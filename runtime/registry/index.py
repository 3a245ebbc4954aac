"""The OCI image index a snapshot-ref's TAG holds: one descriptor per fingerprint, each naming the
manifest its node pushed under TAG-fp-IDENT (model/registry_ref.fingerprint_tag), with the
fingerprint in its annotations.

    mediaType     application/vnd.oci.image.index.v1+json
    artifactType  application/vnd.rewarm.snapshot.v1
    manifests     one descriptor per fingerprint, newest capture first, at most MAX_OFFERS
                  annotations dev.rewarm.snapshot.fingerprint         the fingerprint's ident
                              dev.rewarm.snapshot.fingerprint.facts   its node facts and image (JSON)
                              org.opencontainers.image.created        when the snapshot was captured

The same annotations are on each per-fingerprint manifest itself, so that the index can be
rebuilt from the per-fingerprint tags. The index is a view for people, tools and a pull's
explanation of a miss: the per-fingerprint tags are the truth (registries have no compare-and-swap
on a tag, so two nodes writing the index at once can lose one's line until the next push).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable, Mapping

from runtime.registry.media_types import OCI_INDEX, OCI_MANIFEST
from runtime.registry.native import ARTIFACT_TYPE
from runtime.model.registry_ref import is_fingerprint_ident

FINGERPRINT_KEY = "dev.rewarm.snapshot.fingerprint"
FACTS_KEY = "dev.rewarm.snapshot.fingerprint.facts"
CREATED_KEY = "org.opencontainers.image.created"
MAX_OFFERS = 64          # fingerprints an index lists (the newest captures); older ones keep their tags
MAX_FACTS = 8 << 10      # characters of facts an offer carries


@dataclass(frozen=True)
class Offer:
    """One snapshot under a snapshot-ref: the manifest's descriptor and the fingerprint it was captured with."""
    digest: str
    size: int
    media_type: str
    fingerprint: str      # Fingerprint.ident()
    created: str          # RFC 3339, the capture's
    facts: str = ""       # JSON of the fingerprint's node facts and image ("" when unknown)

    def notes(self) -> dict[str, str]:
        return notes(self.fingerprint, self.created, self.facts)

    def descriptor(self) -> dict[str, Any]:
        return {"mediaType": self.media_type, "digest": self.digest, "size": self.size, "annotations": self.notes()}


def notes(fingerprint: str, created: str, facts: str) -> dict[str, str]:
    """The annotations that say which fingerprint a snapshot has: on its manifest and on its index line."""
    out = {FINGERPRINT_KEY: fingerprint, CREATED_KEY: created}
    if facts:
        out[FACTS_KEY] = facts
    return out


def offer_of(descriptor: Mapping[str, Any], annotations: Mapping[str, Any] | None = None) -> Offer | None:
    """The offer a descriptor makes (its own annotations, or the manifest's where given); None for
    a descriptor that is not a rewarm snapshot's or is malformed: a registry's word is checked."""
    notes = descriptor.get("annotations") if annotations is None else annotations
    digest, size, media = descriptor.get("digest"), descriptor.get("size"), descriptor.get("mediaType", OCI_MANIFEST)
    if not isinstance(notes, Mapping) or not is_fingerprint_ident(notes.get(FINGERPRINT_KEY)):
        return None
    if not (isinstance(digest, str) and digest.startswith("sha256:") and len(digest) == 71
            and isinstance(size, int) and size >= 0 and media == OCI_MANIFEST):
        return None
    created, facts = notes.get(CREATED_KEY, ""), notes.get(FACTS_KEY, "")
    return Offer(digest, size, media, str(notes[FINGERPRINT_KEY]), created if isinstance(created, str) else "",
                 facts if isinstance(facts, str) and len(facts) <= MAX_FACTS else "")


def is_index(manifest: Mapping[str, Any]) -> bool:
    return manifest.get("mediaType") == OCI_INDEX or isinstance(manifest.get("manifests"), list)


def offers_of(index: Mapping[str, Any]) -> list[Offer]:
    """What an index offers, newest first; descriptors that are not rewarm snapshots' are left out."""
    listed = index.get("manifests")
    found = [offer_of(d) for d in listed if isinstance(d, Mapping)] if isinstance(listed, list) else []
    return newest_first(o for o in found if o is not None)


def newest_first(offers: Iterable[Offer]) -> list[Offer]:
    """One offer per fingerprint (the first given wins), the newest capture first; ties in
    fingerprint order, so that the same offers always make the same index."""
    seen: dict[str, Offer] = {}
    for o in offers:
        seen.setdefault(o.fingerprint, o)
    return sorted(seen.values(), key=lambda o: (o.created, o.fingerprint), reverse=True)


def merged(mine: Offer, others: Iterable[Offer]) -> list[Offer]:
    """The index's offers with `mine` in place of any other of its fingerprint, at most MAX_OFFERS
    (the oldest others are left out; `mine` always stays)."""
    rest = [o for o in newest_first(others) if o.fingerprint != mine.fingerprint][:MAX_OFFERS - 1]
    return newest_first([mine, *rest])


def index(offers: Iterable[Offer]) -> dict[str, Any]:
    return {"schemaVersion": 2, "mediaType": OCI_INDEX, "artifactType": ARTIFACT_TYPE,
            "manifests": [o.descriptor() for o in newest_first(offers)]}
