"""The registry tests' knob for "another node": a copy of a store entry whose manifest records a
fingerprint that differs in named fields (another kernel, say), committed through the store like
any capture. Nothing else about the entry changes: its files are the original's, byte for byte."""
from __future__ import annotations

import dataclasses
import os
import shutil
from typing import Any

from runtime.snapshot import store
from runtime.model.settings import Settings


def copy_with_fingerprint(node: Settings, entry: store.Entry, name: str, created: str | None = None,
                          **fingerprint: Any) -> store.Entry:
    """`entry`'s files committed to `node`'s store as (entry's namespace, `name`), its fingerprint
    changed in the fields given (and its capture time, where given)."""
    st = store.Store(node.store)
    fp = dataclasses.replace(entry.manifest.fingerprint, **fingerprint)
    manifest = dataclasses.replace(entry.manifest, name=name, fingerprint=fp, fingerprint_id=fp.ident(),
                                   created=created or entry.manifest.created)
    with st.staging() as staging:
        for rel in entry.manifest.files:
            os.makedirs(os.path.dirname(os.path.join(staging, rel)), exist_ok=True)
            shutil.copyfile(entry.file(rel), os.path.join(staging, rel))
        return st.commit(staging, manifest)
