"""Where a snapshot lives in an OCI registry: `REGISTRY/REPO:TAG` or `REGISTRY/REPO@sha256:HEX`, and
which registries a node accepts pulls from (`allowed_registries`). Plain values, validated where
they enter (an annotation, the command line, the node config)."""
from __future__ import annotations

import hashlib
import ipaddress
import re
from dataclasses import dataclass

from runtime.model.errors import InvalidInput, shown

# The distribution spec's grammar, made strict: the registry part is always written out.
_HOST = r"(?:localhost|\[[0-9a-fA-F:]+\]|[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?(?:\.[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?)*)(?::[0-9]{1,5})?"
_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
_REF_RE = re.compile(rf"(?P<registry>{_HOST})/(?P<repository>{_COMPONENT}(?:/{_COMPONENT})*)"
                     r"(?::(?P<tag>[A-Za-z0-9_][A-Za-z0-9._-]{0,127}))?(?:@(?P<digest>sha256:[a-f0-9]{64}))?")
FORM = "REGISTRY/REPO:TAG or REGISTRY/REPO@sha256:DIGEST"


@dataclass(frozen=True)
class Reference:
    registry: str           # host[:port]
    repository: str
    tag: str | None = None
    digest: str | None = None

    def __str__(self) -> str:
        return f"{self.registry}/{self.repository}" + (f":{self.tag}" if self.tag else "") + (
            f"@{self.digest}" if self.digest else "")

    @property
    def host(self) -> str:
        return self.registry.rsplit(":", 1)[0] if not self.registry.endswith("]") else self.registry

    @property
    def is_loopback(self) -> bool:
        """localhost, or an IP address of the loopback net (a name that merely starts with "127." is not)."""
        if self.host == "localhost":
            return True
        try:
            return ipaddress.ip_address(self.host.strip("[]")).is_loopback
        except ValueError:
            return False

    @property
    def name(self) -> str:
        """REGISTRY/REPO, without tag or digest."""
        return f"{self.registry}/{self.repository}"

    @property
    def reference(self) -> str:
        """What the manifest URL ends in: the digest when given, else the tag."""
        return self.digest or self.tag or "latest"


def parse(text: str, what: str = "snapshot reference") -> Reference:
    match = _REF_RE.fullmatch(text) if isinstance(text, str) and len(text) <= 512 else None
    if match is None or "." not in match["registry"] and ":" not in match["registry"] \
            and match["registry"] != "localhost":
        raise InvalidInput(f"invalid {what} {shown(text)}: expected {FORM}, the registry written out")
    if not match["tag"] and not match["digest"]:
        raise InvalidInput(f"invalid {what} {shown(text)}: name a tag or a digest ({FORM})")
    return Reference(match["registry"], match["repository"], match["tag"], match["digest"])


def refused_for(ref: Reference, namespace: str, allowed_registries: tuple[str, ...],
                namespace_registries: tuple[str, ...]) -> str | None:
    """Why a pod of `namespace` may not pull `ref` on this node (None: it may). allowed_registries
    bound every pod; namespace_registries, once it names any namespace, bounds each namespace to its
    own entries (a namespace it does not name pulls nothing)."""
    if not allowed(ref, allowed_registries):
        return (f"this node does not pull from {ref.registry} (allowed_registries: "
                f"{', '.join(allowed_registries) or 'none'})")
    if not namespace_registries:
        return None
    own = tuple(e.split("=", 1)[1] for e in namespace_registries if e.split("=", 1)[0] == namespace)
    if not allowed(ref, own):
        return (f"namespace {namespace} pulls only from {', '.join(own) or 'nowhere'} (namespace_registries), "
                f"not {ref.name}")
    return None


def allowed(ref: Reference, allowed_registries: tuple[str, ...]) -> bool:
    """Whether `ref` lies under one of the entries: a registry (`HOST[:PORT]`) or a repository prefix
    (`HOST[:PORT]/PATH`), matched at `/` boundaries."""
    name = ref.name
    return any(name == entry.rstrip("/") or name.startswith(entry.rstrip("/") + "/") for entry in allowed_registries)


# --- one snapshot per fingerprint under one tag --------------------------------------------------
# A snapshot-ref's TAG is shared by every node that pushes to it, and nodes differ in their
# fingerprints (CPU features, kernel). Each fingerprint's snapshot has a tag of its own, derived
# from TAG and the fingerprint's ident: pushes of different fingerprints never touch the same tag,
# so no node's push can remove another's (registries have no compare-and-swap on a tag).
FINGERPRINT_INFIX = "-fp-"
_IDENT_RE = re.compile(r"[0-9a-f]{16}")
_TAG_MAX = 128   # the distribution spec's limit on a tag


def is_fingerprint_ident(text: object) -> bool:
    """Whether `text` is a fingerprint's ident as model.fingerprint.Fingerprint.ident() writes it."""
    return isinstance(text, str) and _IDENT_RE.fullmatch(text) is not None


def fingerprint_tag(tag: str, ident: str) -> str:
    """TAG-fp-IDENT: where the snapshot of fingerprint `ident` pushed to TAG lives. A TAG too long
    to take the suffix within the 128 characters of the tag grammar is cut and a hash of it kept,
    so that two long tags with the same beginning still get tags of their own."""
    if not is_fingerprint_ident(ident):
        raise InvalidInput(f"invalid fingerprint ident {shown(ident)}: expected 16 hex digits")
    room = _TAG_MAX - len(FINGERPRINT_INFIX) - len(ident)
    if len(tag) > room:
        tag = f"{tag[:room - 9]}.{hashlib.sha256(tag.encode()).hexdigest()[:8]}"
    return f"{tag}{FINGERPRINT_INFIX}{ident}"


def with_tag(ref: Reference, tag: str) -> Reference:
    """The same repository under another tag (no digest)."""
    return Reference(ref.registry, ref.repository, tag)
