"""An encrypted export: an OCI image layout in one tar (what skopeo calls `oci-archive:FILE`)
holding the snapshot as a checkpoint image (crio.py) whose one layer, the checkpoint archive, is
encrypted in ocicrypt's layout (ocicrypt.py). skopeo, Podman and rewarm's import decrypt it.

    oci-layout                 {"imageLayoutVersion": "1.0.0"}
    index.json                 one manifest
    blobs/sha256/HEX           the manifest, the image config, the encrypted layer
"""
from __future__ import annotations

import hashlib
import json
import os
import tarfile
from typing import Any, Mapping, Sequence

from runtime.registry import crio, media_types, ocicrypt
from runtime.model.errors import ArchiveError, RegistryError
from runtime.registry.media_types import OCI_INDEX

LAYOUT = "oci-layout"
INDEX = "index.json"
MAX_JSON = 4 << 20


def is_oci_archive(path: str) -> bool:
    try:
        with tarfile.open(path) as tar:
            return any(m.name in (LAYOUT, "./" + LAYOUT) for m in tar)
    except (OSError, tarfile.TarError):
        return False


def _put(blobs: str, data: bytes) -> dict[str, Any]:
    digest = hashlib.sha256(data).hexdigest()
    with open(os.path.join(blobs, digest), "wb") as f:
        f.write(data)
    return {"digest": f"sha256:{digest}", "size": len(data)}


def write(layer_tar: str, plain_digest: str, out: str, work: str, recipients: Sequence[ocicrypt.Key],
          notes: Mapping[str, str]) -> None:
    """`layer_tar` (a checkpoint archive whose sha256 is `plain_digest`) sealed to `recipients`, as
    an OCI archive at `out` (appearing with one rename). `work` is an empty private directory."""
    blobs = os.path.join(work, "layout", "blobs", "sha256")
    os.makedirs(blobs, mode=0o700)
    sealed_path = os.path.join(work, "sealed")
    sealed = ocicrypt.seal_file(layer_tar, sealed_path, plain_digest, recipients)
    os.rename(sealed_path, os.path.join(blobs, sealed.blob.split(":")[1]))
    config = {"mediaType": media_types.OCI_CONFIG,
              **_put(blobs, json.dumps(crio.image_config(plain_digest), sort_keys=True).encode())}
    layer = {"mediaType": crio.LAYER_TAR + ocicrypt.SUFFIX, "digest": sealed.blob,
             "size": os.path.getsize(layer_tar), "annotations": dict(sealed.annotations)}
    manifest = {"mediaType": media_types.OCI_MANIFEST,
                **_put(blobs, json.dumps(crio.manifest(config, layer, notes), sort_keys=True).encode())}
    top = os.path.join(work, "layout")
    with open(os.path.join(top, LAYOUT), "w") as f:
        json.dump({"imageLayoutVersion": "1.0.0"}, f)
    with open(os.path.join(top, INDEX), "w") as f:
        json.dump({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": [manifest]}, f)
    tmp = os.path.join(os.path.dirname(os.path.abspath(out)), f".rewarm-export-{os.getpid()}")
    try:
        with tarfile.open(tmp, "w") as tar:
            for name in (LAYOUT, INDEX, "blobs"):
                tar.add(os.path.join(top, name), arcname=name)
        os.chmod(tmp, 0o600)
        os.replace(tmp, out)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _json(tar: tarfile.TarFile, name: str) -> Any:
    member = tar.getmember(name)
    if not member.isfile() or member.size > MAX_JSON:
        raise ArchiveError(f"{name} is not a small file")
    f = tar.extractfile(member)
    assert f is not None
    return json.loads(f.read())


def read(path: str, keys: Sequence[ocicrypt.Key], work: str) -> str:
    """The checkpoint archive inside the OCI archive at `path`, decrypted into `work` (checked: the
    ciphertext's digest, its HMAC, the plaintext's digest). Returns its path."""
    try:
        with tarfile.open(path) as tar:
            index = _json(tar, INDEX)
            (descriptor,) = index["manifests"]
            manifest = _json(tar, f"blobs/sha256/{_hex(descriptor['digest'])}")
            layer = crio.the_layer(manifest)
            if layer is None or not ocicrypt.is_sealed(layer):
                raise ArchiveError(f"{path}: not an encrypted checkpoint image (one encrypted tar layer)")
            plain_digest, sealed = ocicrypt.unseal(layer, keys)
            member = tar.getmember(f"blobs/sha256/{_hex(sealed.blob)}")
            source = tar.extractfile(member) if member.isfile() else None
            if source is None:
                raise ArchiveError(f"{path}: the layer blob is not a file")
            out = os.path.join(work, "checkpoint.tar")
            opener, blob, plain = sealed.opener(), hashlib.sha256(), hashlib.sha256()
            with open(out, "wb") as f:
                while data := source.read(4 << 20):
                    blob.update(data)
                    data = opener.update(data)
                    plain.update(data)
                    f.write(data)
    except (KeyError, ValueError, TypeError, tarfile.TarError) as e:
        raise ArchiveError(f"{path}: not a readable OCI archive ({type(e).__name__}: {e})") from e
    except RegistryError as e:
        raise ArchiveError(f"{path}: {e}") from e
    if "sha256:" + blob.hexdigest() != sealed.blob:
        raise ArchiveError(f"{path}: the encrypted layer does not match its digest (corrupt or altered)")
    try:
        opener.check()
    except RegistryError as e:
        raise ArchiveError(f"{path}: {e}") from e
    if "sha256:" + plain.hexdigest() != plain_digest:
        raise ArchiveError(f"{path}: the decrypted layer does not match the digest its key names")
    return out


def _hex(digest: str) -> str:
    algorithm, _, hex_ = str(digest).partition(":")
    if algorithm != "sha256" or len(hex_) != 64 or any(c not in "0123456789abcdef" for c in hex_):
        raise ArchiveError(f"descriptor digest {str(digest)[:80]!r} is not sha256:HEX")
    return hex_
