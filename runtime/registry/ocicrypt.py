"""Encrypted blobs in the OCI image encryption layout (containers/ocicrypt's, which skopeo, Podman,
containerd's imgcrypt and CRI-O read), with JWE key wrapping:

- a blob is AES-256-CTR with a fresh 32-byte key and 16-byte initial counter, followed in spirit by
  an HMAC-SHA256 of the ciphertext under the same key (cipher `AES_256_CTR_HMAC_SHA256`);
- its media type gains `+encrypted`; its digest and size are the ciphertext's (CTR keeps the size);
- annotation `org.opencontainers.image.enc.keys.jwe`: base64 of a JWE (JSON serialization, A256GCM,
  one recipient per public key: RSA-OAEP for RSA keys, ECDH-ES+A256KW for EC keys) whose payload is
  the private options {"symkey", "digest" (of the plaintext), "cipheroptions": {"nonce"}};
- annotation `org.opencontainers.image.enc.pubopts`: base64 of {"cipher", "hmac", "cipheroptions"}.
Byte strings inside both JSON documents are standard base64, as Go's encoding/json writes []byte.

jwcrypto does the JWE and `cryptography` the cipher; only the layout is written here (no Python
library implements ocicrypt's).
"""
from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from jwcrypto import jwe, jwk  # type: ignore[import-untyped]
from jwcrypto.common import JWException  # type: ignore[import-untyped]

from runtime.model.errors import RegistryError, SettingsError

SUFFIX = "+encrypted"
KEYS_JWE = "org.opencontainers.image.enc.keys.jwe"
PUBOPTS = "org.opencontainers.image.enc.pubopts"
CIPHER = "AES_256_CTR_HMAC_SHA256"
KEY_ANNOTATIONS = ("org.opencontainers.image.enc.keys.", PUBOPTS)
Key = Any   # a jwcrypto JWK (the library has no type hints)


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _unb64(text: Any, what: str) -> bytes:
    try:
        return base64.b64decode(str(text), validate=True)
    except ValueError as e:
        raise RegistryError(f"encrypted blob: {what} is not base64") from e


def load_keys(paths: Sequence[str], what: str) -> list[Key]:
    """PEM keys (RSA or EC; public for encrypting, private for decrypting) from files."""
    keys = []
    for path in paths:
        try:
            with open(path, "rb") as f:
                keys.append(jwk.JWK.from_pem(f.read()))
        except (OSError, ValueError, TypeError, JWException) as e:
            raise SettingsError(f"{what} {path}: not a readable PEM RSA or EC key ({e})") from e
    return keys


@dataclass(frozen=True)
class Sealed:
    """An encrypted blob's secrets and what its descriptor carries."""
    blob: str                                   # sha256:HEX of the ciphertext: what the registry stores
    key: bytes
    nonce: bytes
    mac: bytes
    annotations: Mapping[str, str] = field(default_factory=dict)

    def opener(self) -> "Opener":
        return Opener(self)


def seal(plaintext: bytes, plain_digest: str, recipients: Sequence[Key]) -> tuple[bytes, Sealed]:
    """The ciphertext of one blob and its Sealed (annotations for its descriptor included)."""
    key, nonce = os.urandom(32), os.urandom(16)
    encryptor = Cipher(algorithms.AES(key), modes.CTR(nonce)).encryptor()
    ciphertext = encryptor.update(plaintext) + encryptor.finalize()
    mac = hmac.new(key, ciphertext, hashlib.sha256).digest()
    blob = "sha256:" + hashlib.sha256(ciphertext).hexdigest()
    return ciphertext, Sealed(blob, key, nonce, mac, _annotations(key, nonce, mac, plain_digest, recipients))


def seal_file(src: str, dst: str, plain_digest: str, recipients: Sequence[Key], chunk: int = 4 << 20) -> Sealed:
    """seal() of a file of any size, streamed into `dst`."""
    key, nonce = os.urandom(32), os.urandom(16)
    encryptor = Cipher(algorithms.AES(key), modes.CTR(nonce)).encryptor()
    mac, blob = hmac.new(key, digestmod=hashlib.sha256), hashlib.sha256()
    with open(src, "rb") as fin, open(dst, "wb") as fout:
        while data := fin.read(chunk):
            ciphertext = encryptor.update(data)
            mac.update(ciphertext)
            blob.update(ciphertext)
            fout.write(ciphertext)
    return Sealed("sha256:" + blob.hexdigest(), key, nonce, mac.digest(),
                  _annotations(key, nonce, mac.digest(), plain_digest, recipients))


def _annotations(key: bytes, nonce: bytes, mac: bytes, plain_digest: str, recipients: Sequence[Key]) -> dict[str, str]:
    private = {"symkey": _b64(key), "digest": plain_digest, "cipheroptions": {"nonce": _b64(nonce)}}
    public = {"cipher": CIPHER, "hmac": _b64(mac), "cipheroptions": {}}
    token = jwe.JWE(json.dumps(private).encode(), protected=json.dumps({"enc": "A256GCM"}))
    for recipient in recipients:
        alg = "RSA-OAEP" if recipient["kty"] == "RSA" else "ECDH-ES+A256KW"
        token.add_recipient(recipient, header=json.dumps({"alg": alg}))
    return {KEYS_JWE: _b64(token.serialize(compact=False).encode()), PUBOPTS: _b64(json.dumps(public).encode())}


def is_sealed(descriptor: Mapping[str, Any]) -> bool:
    return str(descriptor.get("mediaType", "")).endswith(SUFFIX)


def unseal(descriptor: Mapping[str, Any], keys: Sequence[Key]) -> tuple[str, Sealed]:
    """(the plaintext's digest, the blob's Sealed) of an encrypted descriptor, with one of `keys`."""
    what = f"encrypted blob {str(descriptor.get('digest'))[:19]}"
    if not keys:
        raise RegistryError(f"{what}: the snapshot is encrypted and no decryption key was given "
                            "(decryption_keys, or --decryption-key)")
    notes = descriptor.get("annotations") or {}
    wrapped = notes.get(KEYS_JWE) if isinstance(notes, dict) else None
    if not wrapped:
        raise RegistryError(f"{what}: no {KEYS_JWE} annotation (only JWE key wrapping is read)")
    private = None
    for part in str(wrapped).split(","):   # ocicrypt joins the JWEs of several key wrappings with commas
        for key in keys:
            token = jwe.JWE()
            try:
                token.deserialize(_unb64(part, KEYS_JWE).decode(), key=key)
                private = json.loads(token.payload)
                break
            except (JWException, ValueError, UnicodeDecodeError):
                continue
        if private is not None:
            break
    if not isinstance(private, dict):
        raise RegistryError(f"{what}: none of the decryption keys opens it (encrypted for other recipients)")
    try:
        public = json.loads(_unb64(notes.get(PUBOPTS, ""), PUBOPTS))
        if public.get("cipher") != CIPHER:
            raise RegistryError(f"{what}: cipher {public.get('cipher')!r} is not {CIPHER}")
        sealed = Sealed(str(descriptor["digest"]), _unb64(private["symkey"], "symkey"),
                        _unb64(private["cipheroptions"]["nonce"], "nonce"), _unb64(public["hmac"], "hmac"),
                        {k: v for k, v in notes.items() if k.startswith(KEY_ANNOTATIONS)})
        digest = str(private["digest"])
    except (KeyError, TypeError, AttributeError, ValueError) as e:
        raise RegistryError(f"{what}: its key options are malformed ({e})") from e
    if len(sealed.key) != 32 or len(sealed.nonce) != 16:
        raise RegistryError(f"{what}: key or nonce of the wrong length")
    return digest, sealed


class Opener:
    """Decrypts one blob as it streams in; `check()` at the end compares its HMAC."""

    def __init__(self, sealed: Sealed):
        self.sealed = sealed
        self._decryptor = Cipher(algorithms.AES(sealed.key), modes.CTR(sealed.nonce)).decryptor()
        self._mac = hmac.new(sealed.key, digestmod=hashlib.sha256)

    def update(self, ciphertext: bytes) -> bytes:
        self._mac.update(ciphertext)
        return self._decryptor.update(ciphertext)

    def check(self) -> None:
        if not hmac.compare_digest(self._mac.digest(), self.sealed.mac):
            raise RegistryError(f"encrypted blob {self.sealed.blob[:19]}: HMAC does not match: "
                                "tampered with, or not the blob its key was made for")
