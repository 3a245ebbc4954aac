"""Shared by the registry tests: a real registry (TLS from a test CA, htpasswd login) run through
testcontainers, a node config that trusts it, and synthetic snapshots with page images large
enough to be cut into pieces."""
from __future__ import annotations

import contextlib
import os
import socket
import tarfile
import threading
from typing import Iterator

from runtime.snapshot import store
from runtime.host.files import write_json
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


class TrickleProxy:
    """A TCP proxy on loopback in front of the registry: each answer's first `fast` bytes pass at
    once, the rest one byte every `gap` seconds, TLS and all (a registry that never stops and never
    finishes: every read stays inside its timeout). A stand-in for a hostile or broken link."""

    def __init__(self, target_port: int, fast: int = 1 << 20, gap: float = 0.5):
        self.target, self.fast, self.gap = target_port, fast, gap
        self.server = socket.create_server(("127.0.0.1", 0))
        self.address = f"127.0.0.1:{self.server.getsockname()[1]}"
        self.closed = threading.Event()
        self.conns: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self.closed.is_set():
            try:
                client, _ = self.server.accept()
            except OSError:
                return
            upstream = socket.create_connection(("127.0.0.1", self.target))
            self.conns += [client, upstream]
            threading.Thread(target=self._pump, args=(client, upstream, False), daemon=True).start()
            threading.Thread(target=self._pump, args=(upstream, client, True), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket, trickle: bool) -> None:
        sent = 0
        try:
            while not self.closed.is_set() and (data := src.recv(1 << 16)):
                if trickle and sent >= self.fast:
                    for i in range(len(data)):
                        if self.closed.wait(self.gap):
                            return
                        dst.sendall(data[i:i + 1])
                else:
                    dst.sendall(data)
                sent += len(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)

    def close(self) -> None:
        self.closed.set()
        self.server.close()
        for s in self.conns:
            with contextlib.suppress(OSError):
                s.close()
