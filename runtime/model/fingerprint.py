"""The compatibility fingerprint: what must be equal between capture and restore.

Recorded in the manifest at capture, computed again (engine.fingerprinting) for every restore; any
difference is a reason to cold start, and `differences()` words each one so that an operator can act.
"""
from __future__ import annotations

import fnmatch
import hashlib
import hmac
import json
from dataclasses import asdict, dataclass, field
from typing import Any, Iterable, Mapping

from runtime.model.annotations import IMAGE_DIGEST_KEY
from runtime.model.errors import shown

# Where the image identity comes from, most precise first: the digest rewarm-runc resolves through
# containerd, CRI-O's image id, then the image reference containerd's CRI gives.
IMAGE_KEYS = (IMAGE_DIGEST_KEY, "io.kubernetes.cri-o.ImageRef", "io.kubernetes.cri.image-name",
              "io.kubernetes.cri-o.ImageName")
COMPARED = ("image", "args", "cwd", "arch", "cpu", "kernel", "criu", "runtime", "gpu")


@dataclass(frozen=True)
class Fingerprint:
    image: str
    args: tuple[str, ...]
    cwd: str
    env: Mapping[str, str]        # name -> HMAC of name and value under env_key (values may be secrets)
    arch: str
    cpu: str                      # vendor, model and a hash of the feature flags
    kernel: str
    criu: str
    runtime: str
    gpu: Mapping[str, Any] | None = field(default=None)  # model, count, driver, cuda_driver
    env_key: str = ""             # key_id() of the key the env values were hashed with

    def ident(self) -> str:
        return hashlib.sha256(json.dumps(self.to_json(), sort_keys=True).encode()).hexdigest()[:16]

    def to_json(self) -> dict[str, Any]:
        out = asdict(self)
        out["args"], out["env"] = list(self.args), dict(self.env)
        out["gpu"] = dict(self.gpu) if self.gpu is not None else None
        return out

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> "Fingerprint":
        return cls(**{**d, "args": tuple(d["args"]), "env": dict(d["env"])})


def short_hash(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def image_of(annotations: Mapping[str, str]) -> str:
    return next((annotations[k] for k in IMAGE_KEYS if annotations.get(k)), "")


def key_id(key: bytes) -> str:
    """Names a fingerprint key without giving it away: nodes that share snapshots share the key."""
    return hmac.new(key, b"rewarm fingerprint key id", hashlib.sha256).hexdigest()[:16]


def env_hashes(env: Iterable[str], ignore: Iterable[str], key: bytes) -> dict[str, str]:
    """Each value keyed by name under the node's fingerprint key. A plain hash of a short secret
    can be reversed by trying values; without the key, these cannot (they leave the node with a push)."""
    patterns = list(ignore)
    out = {}
    for item in env:
        name, _, value = item.partition("=")
        if not any(fnmatch.fnmatchcase(name, pat) for pat in patterns):
            out[name] = hmac.new(key, f"{name}={value}".encode(), hashlib.sha256).hexdigest()[:32]
    return out


def differences(recorded: Fingerprint, here: Fingerprint) -> list[str]:
    """Human-readable reasons why a snapshot recorded as `recorded` cannot restore `here`."""
    reasons = []
    for name in COMPARED:
        a, b = getattr(recorded, name), getattr(here, name)
        if a != b:
            a, b = (list(a), list(b)) if name == "args" else (a, b)
            reasons.append(f"{name}: snapshot has {shown(a, 200)}, this container/node has {shown(b, 200)}")
    if recorded.env_key != here.env_key:
        reasons.append(f"environment: the snapshot's was fingerprinted with key {recorded.env_key or '(none)'}, "
                       f"this node's fingerprint_key_file is key {here.env_key}: nodes that share snapshots "
                       "share that file")
        return reasons
    changed = sorted(k for k in set(recorded.env) | set(here.env) if recorded.env.get(k) != here.env.get(k))
    if changed:
        reasons.append(f"environment differs in {', '.join(changed)}")
    return reasons
