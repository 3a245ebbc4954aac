"""Snapshots from the store to registries: `rewarm push`, and push after an on-ready capture
(`rewarm.dev/push: on-capture`).

The entry's checksums are verified first (a corrupt snapshot is never published), under the
store's read lock. Blobs the registry has already (unchanged pieces of an earlier push, under any
tag) are not sent again. The tag moves only when every blob is in: a failed push leaves the tag
where it was.
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass

from runtime.adapters import logs, store
from runtime.adapters.progress import Progress
from runtime.adapters.registry import cosign
from runtime.engine.formats import FORMATS, Caller, Transfer
from runtime.engine.pull import client_for
from runtime.model import registry_ref
from runtime.model.errors import RegistryError, RewarmError, code_of
from runtime.model.events import EventKind
from runtime.model.settings import Settings


@dataclass
class Pushed:
    entry: store.Entry
    ref: str
    digest: str
    progress: Progress


def push(settings: Settings, name: str, ref_text: str, namespace: str = "default", fmt: str = "native",
         caller: Caller = Caller()) -> Pushed:
    """Push (namespace, name) to REF in format `fmt` (formats.FORMATS names them)."""
    ref = registry_ref.parse(ref_text)
    started = time.monotonic()
    try:
        if not ref.tag or ref.digest:
            raise RegistryError(f"push needs a tag to move, not a digest: {ref}")
        result = _push(Transfer(settings, client_for(settings, ref), caller), name, namespace, ref, fmt)
    except (RewarmError, OSError) as e:
        logs.event(settings.event_log, EventKind.PUSH_FAILED, namespace=namespace, snapshot=name, ref=str(ref),
                   reason=str(e), code=code_of(e).value, seconds=round(time.monotonic() - started, 3))
        raise
    result.progress.finish()   # the clock stops once the tag is moved
    logs.event(settings.event_log, EventKind.PUSHED, namespace=namespace, snapshot=name, ref=str(ref),
               digest=result.digest, entry=result.entry.ident, bytes=result.progress.moved,
               skipped_bytes=result.progress.skipped, seconds=round(result.progress.seconds(), 3))
    return result


def _push(t: Transfer, name: str, namespace: str, ref: registry_ref.Reference, fmt: str) -> Pushed:
    if fmt not in FORMATS:
        raise RegistryError(f"unknown format {fmt[:20]!r} (known: {', '.join(FORMATS)})")
    st = store.Store(t.settings.store)
    entries = st.entries(namespace, name)
    if not entries:
        raise RegistryError(f"no snapshot {namespace}/{name} to push")
    entry = entries[0]
    assert ref.tag is not None
    with st.reading(namespace, name):
        if not os.path.isdir(entry.path):
            raise RegistryError(f"snapshot {namespace}/{name} was replaced while the push began; push again")
        store.verify(entry, deep=True)
        signer = cosign.load_private(t.settings.sign_key_file) if t.settings.sign_key_file else None
        digest, progress = FORMATS[fmt].push(t, entry, ref.tag)
    if signer is not None:
        cosign.sign(t.client, digest, signer)
    return Pushed(entry, str(ref), digest, progress)
