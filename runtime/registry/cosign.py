"""Key-based signatures in cosign's layout, so that `cosign sign --key` and `cosign verify --key`
interoperate with rewarm's push and pull:

- the signature of manifest `sha256:HEX` of REPO is an OCI manifest tagged `sha256-HEX.sig` in REPO;
- each of its layers (media type `application/vnd.dev.cosign.simplesigning.v1+json`) is a payload
  {"critical": {"identity": {"docker-reference": REGISTRY/REPO}, "image": {"docker-manifest-digest":
  DIGEST}, "type": "cosign container image signature"}, "optional": null}, and its annotation
  `dev.cosignproject.cosign/signature` holds the base64 signature of the payload's bytes: ECDSA
  (P-256, SHA-256, DER) or RSA PKCS#1 v1.5 with SHA-256;
- several signers append layers to the same manifest.

Keys are PEM files (PKCS#8 / SubjectPublicKeyInfo; `cosign import-key-pair` turns such a private
key into cosign's own format). Checking against a transparency log is cosign's business, not a node's.
"""
from __future__ import annotations

import base64
import json
from typing import Any, Sequence

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa

from runtime.registry import transfer
from runtime.registry.client import Client
from runtime.registry.media_types import OCI_CONFIG, OCI_MANIFEST
from runtime.model.errors import RegistryError, SettingsError

PAYLOAD_TYPE = "application/vnd.dev.cosign.simplesigning.v1+json"
SIGNATURE_KEY = "dev.cosignproject.cosign/signature"
SIGNATURE_TYPE = "cosign container image signature"
MAX_PAYLOAD = 64 << 10

PrivateKey = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey
PublicKey = ec.EllipticCurvePublicKey | rsa.RSAPublicKey


def tag_of(digest: str) -> str:
    return digest.replace(":", "-") + ".sig"


def load_private(path: str) -> PrivateKey:
    try:
        with open(path, "rb") as f:
            key = serialization.load_pem_private_key(f.read(), password=None)
    except (OSError, ValueError, TypeError) as e:
        raise SettingsError(f"signing key {path}: not a readable unencrypted PEM EC or RSA private key ({e})") from e
    if not isinstance(key, (ec.EllipticCurvePrivateKey, rsa.RSAPrivateKey)):
        raise SettingsError(f"signing key {path}: only EC and RSA keys sign")
    return key


def load_public(paths: Sequence[str]) -> list[PublicKey]:
    keys = []
    for path in paths:
        try:
            with open(path, "rb") as f:
                key = serialization.load_pem_public_key(f.read())
        except (OSError, ValueError, TypeError) as e:
            raise SettingsError(f"signature key {path}: not a readable PEM public key ({e})") from e
        if not isinstance(key, (ec.EllipticCurvePublicKey, rsa.RSAPublicKey)):
            raise SettingsError(f"signature key {path}: only EC and RSA keys verify")
        keys.append(key)
    return keys


def payload(client: Client, digest: str) -> bytes:
    return json.dumps({"critical": {"identity": {"docker-reference": f"{client.ref.registry}/{client.ref.repository}"},
                                    "image": {"docker-manifest-digest": digest}, "type": SIGNATURE_TYPE},
                       "optional": None}).encode()


def _sign(key: PrivateKey, data: bytes) -> bytes:
    if isinstance(key, ec.EllipticCurvePrivateKey):
        return key.sign(data, ec.ECDSA(hashes.SHA256()))
    return key.sign(data, padding.PKCS1v15(), hashes.SHA256())


def _verifies(key: PublicKey, signature: bytes, data: bytes) -> bool:
    try:
        if isinstance(key, ec.EllipticCurvePublicKey):
            key.verify(signature, data, ec.ECDSA(hashes.SHA256()))
        else:
            key.verify(signature, data, padding.PKCS1v15(), hashes.SHA256())
        return True
    except InvalidSignature:
        return False


def sign(client: Client, digest: str, key: PrivateKey) -> str:
    """Sign manifest `digest` of the client's repository; the signature's tag. Signatures already
    there (other signers) are kept; where this key has signed the digest already, nothing is
    added (an ECDSA signature differs each time: a push of the same manifest again would grow the list)."""
    try:
        verify(client, digest, [key.public_key()])
        return tag_of(digest)
    except RegistryError:
        pass   # not signed by this key yet
    data = payload(client, digest)
    layer = {"mediaType": PAYLOAD_TYPE, "digest": transfer.put_config(client, data), "size": len(data),
             "annotations": {SIGNATURE_KEY: base64.b64encode(_sign(key, data)).decode()}}
    layers = [x for x in _existing(client, digest) if x.get("annotations") != layer["annotations"]] + [layer]
    config = json.dumps({"architecture": "", "os": "", "config": {},
                         "rootfs": {"type": "layers", "diff_ids": [x["digest"] for x in layers]}}).encode()
    manifest = {"schemaVersion": 2, "mediaType": OCI_MANIFEST,
                "config": {"mediaType": OCI_CONFIG, "digest": transfer.put_config(client, config), "size": len(config)},
                "layers": layers}
    client.put_manifest(manifest, tag_of(digest))
    return tag_of(digest)


def _existing(client: Client, digest: str) -> list[dict[str, Any]]:
    try:
        _, manifest = client.get_manifest(tag_of(digest))
    except RegistryError:
        return []
    layers = manifest.get("layers")
    return [x for x in layers if isinstance(x, dict) and x.get("mediaType") == PAYLOAD_TYPE] \
        if isinstance(layers, list) else []


def verify(client: Client, digest: str, keys: Sequence[PublicKey]) -> None:
    """Refuse manifest `digest` unless one of its signatures verifies with one of `keys` and signs
    exactly this digest. Runs before any byte of the snapshot is fetched."""
    what = f"{client.ref.name}@{digest[:19]}"
    if not keys:
        raise SettingsError("signatures are required (require_signature) but no signature_keys are set")
    with client.exchange(f"signature of {what}"):   # one deadline for all its layers, however many
        _verify(client, digest, keys, what)


def _verify(client: Client, digest: str, keys: Sequence[PublicKey], what: str) -> None:
    try:
        _, manifest = client.get_manifest(tag_of(digest))
    except RegistryError as e:
        raise RegistryError(f"{what} is not signed: no signature at {tag_of(digest)} ({e})") from e
    layers = manifest.get("layers")
    unread = ""   # why a payload could not be fetched, for the refusal
    for layer in layers if isinstance(layers, list) else []:
        if not isinstance(layer, dict) or layer.get("mediaType") != PAYLOAD_TYPE:
            continue
        try:
            signature = base64.b64decode(str((layer.get("annotations") or {}).get(SIGNATURE_KEY, "")), validate=True)
            data = transfer.fetch_bytes(client, str(layer["digest"]), int(layer["size"]), limit=MAX_PAYLOAD)
            signed = json.loads(data)["critical"]
        except RegistryError as e:
            unread = unread or f"; a payload not read: {e}"
            continue
        except (ValueError, KeyError, TypeError, AttributeError):
            continue
        if signed.get("type") == SIGNATURE_TYPE and signed.get("image", {}).get("docker-manifest-digest") == digest \
                and any(_verifies(key, signature, data) for key in keys):
            return
    raise RegistryError(f"{what}: no signature there verifies with signature_keys (signed by another key, "
                        f"for another digest, or altered){unread}")
