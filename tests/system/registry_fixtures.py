"""Shared by the registry tests: a real registry (TLS from a test CA, htpasswd login) run through
testcontainers, a node config that trusts it, and synthetic snapshots with page images large
enough to be cut into pieces."""
from __future__ import annotations

import os
import socket
import tarfile
from typing import Iterator

from runtime.adapters import store
from runtime.adapters.files import write_json
from runtime.engine.fingerprinting import of_container
from runtime.lab.registry_lab import Registry
from runtime.model import layout
from runtime.model.manifest import Manifest
from runtime.model.settings import Settings


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def synthetic_entry(node: Settings, name: str, pages: bytes, namespace: str = "default") -> store.Entry:
    """A complete entry (CRIU inventory, page image, spec, empty rootfs diff) of a made-up process."""
    st = store.Store(node.store).ensure()
    with st.staging() as staging:
        os.makedirs(os.path.join(staging, "checkpoint"))
        for file, data in (("inventory.img", b"inventory"), ("pages-1.img", pages)):
            with open(os.path.join(staging, "checkpoint", file), "wb") as f:
                f.write(data)
        spec = {"process": {"args": ["/worker"], "env": [], "cwd": "/"}}
        write_json(os.path.join(staging, layout.SPEC_DUMP), spec)
        write_json(os.path.join(staging, layout.CONFIG_DUMP), {"id": name, "name": name})
        with tarfile.open(os.path.join(staging, layout.ROOTFS_DIFF), "w"):
            pass
        write_json(os.path.join(staging, layout.DELETED_FILES), [])
        fp = of_container(spec, node)
        return st.commit(staging, Manifest(namespace=namespace, name=name, created="2026-11-29T00:00:00Z",
                                           fingerprint=fp, fingerprint_id=fp.ident(), source={"container_id": name}))


def started_registry(directory: str) -> Iterator[Registry]:
    registry = Registry(directory, free_port()).start()
    try:
        yield registry
    finally:
        registry.stop()
