"""What every registry format of a snapshot is asked (`Format`), and the values a push or pull hands
it: the `Transfer` under way and, for a pull, the `Staging` it lands in; the checks both pulls make."""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any, Mapping, Protocol, TextIO

from runtime.snapshot import store
from runtime.observe.progress import Progress
from runtime.registry import native, ocicrypt
from runtime.registry.client import Client
from runtime.model.errors import PullRefused
from runtime.model.fingerprint import Fingerprint
from runtime.model.manifest import Manifest
from runtime.model.settings import Settings


@dataclass(frozen=True)
class Caller:
    """Who asked for a transfer and where its progress goes: a terminal or a log (`stream`, `quiet`),
    and for a pull on miss the container it is for (named in its events) and that container's
    fingerprint on this node (`fits`: the pull takes the snapshot of that fingerprint, or none;
    None: the operator's pull, which takes what the reference names, the newest of an index)."""
    stream: TextIO | None = None
    quiet: bool = False
    container: str | None = None
    fits: Fingerprint | None = None


@dataclass(frozen=True)
class Transfer:
    """One push or pull under way: the node's settings, the registry repository's client, the caller."""
    settings: Settings
    client: Client
    caller: Caller = field(default_factory=Caller)

    def progress(self, verb: str, total: int) -> Progress:
        return Progress(verb, total, self.caller.stream, self.caller.quiet)


@dataclass(frozen=True)
class Staging:
    """Where a pull lands: the store, its staging directory (`resume`: kept from a pull that broke
    off), and the name, namespace and origin of the entry it becomes."""
    store: store.Store
    path: str
    resume: bool
    name: str
    namespace: str
    origin: Mapping[str, str]


class Format(Protocol):
    name: str          # as `--format` names it

    def recognises(self, oci_manifest: Mapping[str, Any]) -> bool:
        """Whether a registry's manifest is a snapshot in this format."""
        ...

    def push(self, t: Transfer, entry: store.Entry, tag: str,
             notes: Mapping[str, str]) -> tuple[dict[str, Any], Progress]:
        """Upload the entry and put its manifest, annotated with `notes` too, under `tag`; returns
        the manifest's descriptor (media type, digest, size)."""
        ...

    def fingerprint(self, t: Transfer, oci_manifest: Mapping[str, Any]) -> Fingerprint | None:
        """The fingerprint the snapshot was captured with, where the registry tells it without a pull
        (None: only the pulled snapshot says)."""
        ...

    def pull(self, t: Transfer, oci_manifest: Mapping[str, Any], into: Staging) -> tuple[store.Entry, Progress]:
        """Fetch the snapshot into the staging directory and commit it to the store."""
        ...


# --- what both formats' pulls check ------------------------------------------------------------
PULL_SPARE = 1 << 30   # what a pull leaves free on the store's disk


def check_room(t: Transfer, staging: str, declared: int) -> None:
    """Refuse, before a byte is written, a snapshot larger than pull_max_bytes or than the store's
    disk can take (less PULL_SPARE): its manifest's word is all there is until the bytes come, and
    a hostile registry could claim any size. What a resumed pull has already is counted as there."""
    limit, ref, gib = t.settings.pull_max_bytes, t.client.ref, declared / 2**30
    if limit and declared > limit:
        raise PullRefused(f"{ref}: the snapshot is {gib:.2f} GiB, more than pull_max_bytes ({limit / 2**30:.2f} GiB)")
    have = sum(os.lstat(os.path.join(d, f)).st_blocks * 512 for d, _, fs in os.walk(staging) for f in fs)
    fs = os.statvfs(staging)
    free = fs.f_bavail * fs.f_frsize
    if declared - have > free - PULL_SPARE:
        raise PullRefused(f"{ref}: the snapshot is {gib:.2f} GiB and the store's disk has "
                            f"{free / 2**30:.2f} GiB free ({PULL_SPARE >> 30} GiB is kept free)")


def refuse_foreign(t: Transfer, manifest: Manifest, namespace: str) -> None:
    """A snapshot enters a namespace only if that namespace's pods may restore it: the node's
    credentials must not carry one team's memory to another's pods."""
    why = manifest.unreadable_from((namespace, *t.settings.shared_namespaces))
    if why:
        raise PullRefused(f"{t.client.ref} is not pulled into namespace {namespace}: {why}")


def decryption_keys(t: Transfer, oci_manifest: Mapping[str, Any]) -> list[ocicrypt.Key]:
    return ocicrypt.load_keys(t.settings.decryption_keys, "decryption key") if native.is_sealed(oci_manifest) else []


def recipients(t: Transfer) -> list[ocicrypt.Key]:
    """Whom a push encrypts to (none: in the clear)."""
    return ocicrypt.load_keys(t.settings.encrypt_recipients, "encryption recipient")
