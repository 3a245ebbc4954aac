"""Snapshots from the store to registries: `rewarm push` (the newest entry of a name), and push
after an on-ready capture (`rewarm.dev/push: on-capture`: exactly the entry captured).

The entry's checksums are verified first (a corrupt snapshot is never published), under the
store's read lock. Blobs the registry has already (unchanged pieces of an earlier push, under any
tag) are not sent again. The manifest goes under the entry's own per-fingerprint tag, TAG-fp-IDENT,
which moves only when every blob is in: a failed push leaves the tag where it was. TAG itself
becomes the index of the fingerprints there (formats/per_fingerprint.py says why and how).
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass

from runtime.observe import logs
from runtime.snapshot import store
from runtime.observe.progress import Progress
from runtime.registry import cosign, index
from runtime.engine.formats import FORMATS, Caller, Transfer, per_fingerprint
from runtime.engine.pull import client_for
from runtime.model import registry_ref
from runtime.model.errors import RegistryError, RewarmError, code_of
from runtime.model.events import EventKind
from runtime.model.settings import Settings


@dataclass
class Pushed:
    entry: store.Entry
    ref: str                  # REGISTRY/REPO:TAG-fp-IDENT: where the manifest went
    digest: str
    progress: Progress
    unlisted: str | None = None   # why TAG's index does not list it (None: it does)


@dataclass(frozen=True)
class _Which:
    """The snapshot to push: `entry` itself, or (None) the newest entry of (namespace, name)."""
    namespace: str
    name: str
    entry: store.Entry | None = None


def push(settings: Settings, name: str, ref_text: str, namespace: str = "default", fmt: str = "native",
         caller: Caller = Caller()) -> Pushed:
    """Push the newest entry of (namespace, name) to REF in format `fmt` (formats.FORMATS names
    them): `rewarm push NAME`."""
    return _logged(settings, _Which(namespace, name), ref_text, fmt, caller)


def push_entry(settings: Settings, entry: store.Entry, ref_text: str, fmt: str = "native",
               caller: Caller = Caller()) -> Pushed:
    """Push exactly `entry` (an on-ready capture's own: another capture of its name may have
    committed since, of another fingerprint)."""
    return _logged(settings, _Which(entry.namespace, entry.name, entry), ref_text, fmt, caller)


def _logged(settings: Settings, which: _Which, ref_text: str, fmt: str, caller: Caller) -> Pushed:
    ref = registry_ref.parse(ref_text)
    started = time.monotonic()
    where = {"namespace": which.namespace, "snapshot": which.name, "ref": str(ref)}
    try:
        if not ref.tag or ref.digest:
            raise RegistryError(f"push needs a tag to move, not a digest: {ref}")
        result = _push(Transfer(settings, client_for(settings, ref), caller), which, ref, fmt)
    except (RewarmError, OSError) as e:
        logs.event(settings.event_log, EventKind.PUSH_FAILED, **where, reason=str(e), code=code_of(e).value,
                   seconds=round(time.monotonic() - started, 3))
        raise
    result.progress.finish()   # the clock stops once the tags are moved
    unlisted = {"unlisted": result.unlisted} if result.unlisted else {}
    logs.event(settings.event_log, EventKind.PUSHED, **where, fingerprint_ref=result.ref, digest=result.digest,
               entry=result.entry.ident, fingerprint=result.entry.manifest.fingerprint.ident(),
               bytes=result.progress.moved, skipped_bytes=result.progress.skipped,
               seconds=round(result.progress.seconds(), 3), **unlisted)
    return result


def _push(t: Transfer, which: _Which, ref: registry_ref.Reference, fmt: str) -> Pushed:
    if fmt not in FORMATS:
        raise RegistryError(f"unknown format {fmt[:20]!r} (known: {', '.join(FORMATS)})")
    st = store.Store(t.settings.store)
    entry = which.entry or _newest(st, which)
    assert ref.tag is not None
    tag = per_fingerprint.tag_of(ref.tag, entry)
    with st.reading(entry.namespace, entry.name):
        if not os.path.isdir(entry.path):
            raise RegistryError(f"snapshot {entry.namespace}/{entry.name} ({entry.ident}) was replaced or removed "
                                "before the push began; push again")
        store.verify(entry, deep=True)
        signer = cosign.load_private(t.settings.sign_key_file) if t.settings.sign_key_file else None
        notes = per_fingerprint.notes_of(entry)
        put, progress = FORMATS[fmt].push(t, entry, tag, notes)
    if signer is not None:
        cosign.sign(t.client, put["digest"], signer)
    mine = index.offer_of(put, notes)
    assert mine is not None   # the descriptor and notes made just now
    unlisted = per_fingerprint.publish(t, ref.tag, mine)
    return Pushed(entry, str(registry_ref.with_tag(ref, tag)), put["digest"], progress, unlisted)


def _newest(st: store.Store, which: _Which) -> store.Entry:
    entries = st.entries(which.namespace, which.name)
    if not entries:
        raise RegistryError(f"no snapshot {which.namespace}/{which.name} to push")
    return entries[0]
