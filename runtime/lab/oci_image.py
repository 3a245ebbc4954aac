"""Build small OCI images from files of this machine and import them into containerd.

For the demo, the tests and node images: no registry and no base image is needed. The worker image
carries the machine's Python (interpreter, standard library, the shared libraries they load) at the
same paths, plus the worker's own files.
"""
from __future__ import annotations

import hashlib
import io
import json
import os
import subprocess
import tarfile
import tempfile
from dataclasses import dataclass, field
from typing import Any

SKIP_DIRS = {"test", "tests", "idlelib", "tkinter", "turtledemo", "ensurepip", "lib2to3", "pydoc_data",
             "site-packages", "dist-packages"}


@dataclass
class ImageSpec:
    name: str                                   # full reference, e.g. localhost/rewarm/worker:demo
    entrypoint: list[str] = field(default_factory=list)
    cmd: list[str] = field(default_factory=list)
    env: list[str] = field(default_factory=lambda: ["PATH=/usr/local/bin:/usr/bin:/bin"])
    workdir: str = "/"
    paths: list[str] = field(default_factory=list)        # host paths copied to the same place
    files: dict[str, bytes] = field(default_factory=dict)  # image path -> content
    trees: dict[str, str] = field(default_factory=dict)    # image dir -> host dir (copied whole)


class _Layer:
    """One uncompressed layer tar; host paths keep their place, symlinks in them are kept as links."""

    def __init__(self, fileobj: io.BufferedIOBase):
        self.tar = tarfile.open(fileobj=fileobj, mode="w", format=tarfile.PAX_FORMAT)
        self.seen: set[str] = set()

    def _dirs_of(self, member: str) -> None:
        parts = member.split("/")[:-1]
        for i in range(1, len(parts) + 1):
            d = "/".join(parts[:i])
            if d and d not in self.seen:
                self.seen.add(d)
                info = tarfile.TarInfo(d)
                info.type, info.mode = tarfile.DIRTYPE, 0o755
                self.tar.addfile(info)

    def host_path(self, path: str) -> None:
        """Add a host path at the same place; a symlinked parent (merged /usr: /lib64 -> usr/lib64)
        or a symlinked file becomes a link in the image too, followed to its target."""
        path = os.path.normpath(path)
        parts = path.strip("/").split("/")
        for i in range(1, len(parts)):
            prefix = "/" + "/".join(parts[:i])
            if os.path.islink(prefix):
                self._link(prefix)
                self.host_path(os.path.join(os.path.realpath(prefix), *parts[i:]))
                return
        if os.path.islink(path):
            self._link(path)
            self.host_path(os.path.join(os.path.dirname(path), os.readlink(path)))
        elif os.path.isdir(path):
            self.tree(path, path)
        elif path.strip("/") not in self.seen:
            self._dirs_of(path.strip("/"))
            self.seen.add(path.strip("/"))
            self.tar.add(path, arcname=path.strip("/"), recursive=False)

    def _link(self, path: str) -> None:
        member = path.strip("/")
        if member in self.seen:
            return
        self._dirs_of(member)
        self.seen.add(member)
        info = tarfile.TarInfo(member)
        info.type, info.linkname = tarfile.SYMTYPE, os.readlink(path)
        self.tar.addfile(info)

    def tree(self, image_dir: str, host_dir: str) -> None:
        for root, dirs, files in os.walk(host_dir):
            dirs[:] = sorted(d for d in dirs if d not in SKIP_DIRS)
            rel = os.path.relpath(root, host_dir)
            target = os.path.normpath(os.path.join(image_dir, rel)).strip("/")
            self._dirs_of(target + "/x")
            for name in sorted(files):
                member = f"{target}/{name}"
                if member not in self.seen:
                    self.seen.add(member)
                    self.tar.add(os.path.join(root, name), arcname=member, recursive=False)

    def content(self, path: str, data: bytes, mode: int = 0o644) -> None:
        member = path.strip("/")
        self._dirs_of(member)
        self.seen.add(member)
        info = tarfile.TarInfo(member)
        info.size, info.mode = len(data), mode
        self.tar.addfile(info, io.BytesIO(data))

    def close(self) -> None:
        self.tar.close()


def shared_libraries(binaries: list[str]) -> list[str]:
    """The shared libraries (and the loader) that `ldd` says these binaries load."""
    libs: set[str] = set()
    for binary in binaries:
        out = subprocess.run(["ldd", binary], capture_output=True, text=True).stdout
        for line in out.splitlines():
            words = line.split()
            path = words[2] if "=>" in words and len(words) > 2 else (words[0] if words else "")
            if path.startswith("/"):
                libs.add(path)
    return sorted(libs)


def python_paths(python: str = "/usr/bin/python3", packages: tuple[str, ...] = ()) -> list[str]:
    """A Python interpreter and everything it needs to run the standard library's server code, plus
    the system libraries that the extension modules under `packages` (site dirs copied into the image
    elsewhere) load."""
    out = subprocess.run([python, "-c", "import sys, sysconfig; print(sys.executable); "
                                        "print(sysconfig.get_path('stdlib')); print(sysconfig.get_path('platstdlib'))"],
                         capture_output=True, text=True, check=True).stdout.split()
    executable, stdlib, platstdlib = out[0], out[1], out[2]
    binaries = [os.path.realpath(executable)]
    for root in {stdlib, platstdlib, *packages}:
        for dirpath, _, files in os.walk(root):
            binaries += [os.path.join(dirpath, f) for f in files if ".so" in f and not f.endswith(".py")]
    inside = tuple(os.path.realpath(p) + "/" for p in packages)
    libs = [lib for lib in shared_libraries(binaries) if not os.path.realpath(lib).startswith(inside)]
    return [executable, stdlib, platstdlib, *libs]


def _blob(blobs: str, data: bytes) -> dict[str, Any]:
    digest = hashlib.sha256(data).hexdigest()
    with open(os.path.join(blobs, digest), "wb") as f:
        f.write(data)
    return {"digest": f"sha256:{digest}", "size": len(data)}


def write_archive(spec: ImageSpec, out: str) -> str:
    """Write an OCI image archive (oci-layout, index.json, blobs) for `spec`; returns the manifest digest."""
    with tempfile.TemporaryDirectory() as tmp:
        blobs = os.path.join(tmp, "blobs", "sha256")
        os.makedirs(blobs)
        layer_path = os.path.join(tmp, "layer.tar")
        with open(layer_path, "wb") as f:
            layer = _Layer(f)
            for path in spec.paths:
                layer.host_path(path)
            for image_dir, host_dir in spec.trees.items():
                layer.tree(image_dir, host_dir)
            for path, data in spec.files.items():
                layer.content(path, data)
            layer.close()
        with open(layer_path, "rb") as f:
            layer_desc = {"mediaType": "application/vnd.oci.image.layer.v1.tar", **_blob(blobs, f.read())}
        config = {"architecture": "amd64", "os": "linux",
                  "config": {"Entrypoint": spec.entrypoint or None, "Cmd": spec.cmd or None, "Env": spec.env,
                             "WorkingDir": spec.workdir},
                  "rootfs": {"type": "layers", "diff_ids": [layer_desc["digest"]]}}
        config_desc = {"mediaType": "application/vnd.oci.image.config.v1+json",
                       **_blob(blobs, json.dumps(config).encode())}
        manifest = {"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
                    "config": config_desc, "layers": [layer_desc]}
        manifest_desc = {"mediaType": "application/vnd.oci.image.manifest.v1+json",
                         **_blob(blobs, json.dumps(manifest).encode()),
                         "annotations": {"io.containerd.image.name": spec.name,
                                         "org.opencontainers.image.ref.name": spec.name.rsplit(":", 1)[-1]}}
        with open(os.path.join(tmp, "index.json"), "w") as f:
            json.dump({"schemaVersion": 2, "manifests": [manifest_desc]}, f)
        with open(os.path.join(tmp, "oci-layout"), "w") as f:
            json.dump({"imageLayoutVersion": "1.0.0"}, f)
        os.unlink(layer_path)
        with tarfile.open(out, "w") as tar:
            for name in ("oci-layout", "index.json", "blobs"):
                tar.add(os.path.join(tmp, name), arcname=name)
        return str(manifest_desc["digest"])


def import_archive(archive: str, address: str, namespace: str = "k8s.io", ctr: str = "ctr") -> None:
    proc = subprocess.run([ctr, "--address", address, "--namespace", namespace, "images", "import", archive],
                          capture_output=True, text=True, timeout=600)
    if proc.returncode != 0:
        raise RuntimeError(f"ctr images import {archive}: {proc.stderr.strip()}")


def build_and_import(spec: ImageSpec, address: str, namespace: str = "k8s.io", ctr: str = "ctr") -> str:
    with tempfile.TemporaryDirectory() as tmp:
        archive = os.path.join(tmp, "image.tar")
        digest = write_archive(spec, archive)
        import_archive(archive, address, namespace, ctr)
        return digest
