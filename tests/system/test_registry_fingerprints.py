"""One snapshot-ref shared by nodes of different fingerprints, against a real registry (Debian's
docker-registry, TLS, htpasswd): pushes of different fingerprints to one ref at the same time never
remove each other's snapshot, each node pulls its own, a push of the same snapshot again changes
nothing, a push publishes exactly the entry it is given, a node that fits none is refused with the
differences, and a ref pushed before per-fingerprint tags still pulls.

Two "nodes" are two configs with stores of their own on this machine. The knob that makes them
differ is named: node B's entries record another kernel in their fingerprint (OTHER_KERNEL), and
its pulls fit that fingerprint (Caller.fits, which a pull on miss sets from the container's spec).
"""
from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import threading

import pytest

from fingerprint_knob import copy_with_fingerprint
from helpers import events
from private_registry import private_registry
from registry_fixtures import synthetic_entry
from runtime.host import settings_file
from runtime.snapshot import store
from runtime.registry import index
from runtime.registry.client import Client
from runtime.engine import pull, push
from runtime.engine.formats import Caller
from runtime.engine.formats.per_fingerprint import facts_of
from runtime.engine.fingerprinting import of_container
from runtime.front.names import CONFIG_ENV
from runtime.lab.private_node import write_config
from runtime.model import layout, registry_ref
from runtime.model.errors import PullRefused
from runtime.model.events import ReasonCode
from runtime.model.fingerprint import Fingerprint
from runtime.model.settings import Settings

OTHER_KERNEL = "6.12.99-test-knob"        # node B's kernel, as its entries and pulls say
PAGES = 6 << 20
ROUNDS = 4


@pytest.fixture(scope="module")
def registry(tmp_path_factory):
    yield from private_registry(str(tmp_path_factory.mktemp("registry")), "fingerprints")


@dataclasses.dataclass(frozen=True)
class Node:
    config: str
    settings: Settings
    kernel: str | None         # None: this machine's; else the knob

    def fingerprint(self) -> Fingerprint:
        fp = of_container(SPEC, self.settings)
        return dataclasses.replace(fp, kernel=self.kernel) if self.kernel else fp

    def caller(self) -> Caller:
        return Caller(quiet=True, fits=self.fingerprint())


SPEC = {"process": {"args": ["/worker"], "env": [], "cwd": "/"}}   # synthetic_entry's container


def make_node(top: str, registry, kernel: str | None = None, **extra: object) -> Node:
    auth = registry.auth_file(os.path.join(top, "auth.json"))
    path = write_config(top, registry_ca_file=registry.ca, registry_auth_file=auth, transfer_threads=4, **extra)
    return Node(path, settings_file.load(path), kernel)


@pytest.fixture(scope="module")
def nodes(node, registry, tmp_path_factory) -> tuple[Node, Node]:
    """Node A (this machine's fingerprint) and node B (OTHER_KERNEL), sharing the fingerprint key as
    nodes that share snapshots do."""
    return (make_node(str(tmp_path_factory.mktemp("node-a")), registry),
            make_node(str(tmp_path_factory.mktemp("node-b")), registry, OTHER_KERNEL))


def entry_on(n: Node, name: str, pages: bytes, created: str | None = None) -> store.Entry:
    """A synthetic entry committed to the node's store, with the node's fingerprint (and capture
    time, where given)."""
    if not n.kernel and not created:
        return synthetic_entry(n.settings, name, pages)
    made = synthetic_entry(n.settings, f"scratch-{name}", pages)   # this machine's fingerprint: made over
    try:
        return copy_with_fingerprint(n.settings, made, name, created, kernel=n.fingerprint().kernel)
    finally:
        store.Store(n.settings.store).remove(made.namespace, made.name)


def pushed_from_each(nodes: tuple[Node, ...], name: str, ref: str, size: int = 1 << 20, *push: str) -> None:
    """A synthetic entry `name` of its own on each node (its fingerprint), each pushed to `ref`."""
    for n in nodes:
        entry_on(n, name, os.urandom(size))
        assert cli(n, "push", name, ref, *push).returncode == 0


def cli(n: Node, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([os.path.join(os.path.dirname(sys.executable), "rewarm"), *args], capture_output=True,
                          text=True, timeout=300, env=dict(os.environ, **{CONFIG_ENV: n.config}))


def at_once(*calls: tuple[Node, tuple[str, ...]]) -> list[subprocess.CompletedProcess[str]]:
    """The commands in processes of their own, started together."""
    outs: list[subprocess.CompletedProcess[str] | None] = [None] * len(calls)
    start = threading.Barrier(len(calls))

    def run(i: int, n: Node, args: tuple[str, ...]) -> None:
        start.wait()
        outs[i] = cli(n, *args)
    threads = [threading.Thread(target=run, args=(i, n, args)) for i, (n, args) in enumerate(calls)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert all(o is not None for o in outs)
    return [o for o in outs if o is not None]


def client(n: Node, text: str) -> Client:
    return pull.client_for(n.settings, registry_ref.parse(text))


def tags(n: Node, text: str) -> dict[str, str]:
    """Every tag of the ref's repository, with the digest it names."""
    c = client(n, text)
    return {t: c.manifest_digest(t) or "" for t in c.tags()}


def pushed_config(n: Node, text: str, fp: Fingerprint) -> bytes:
    """The manifest.json under the fingerprint's own tag of `text`."""
    c = client(n, text)
    ref = registry_ref.parse(text)
    assert ref.tag
    _, manifest = c.get_manifest(registry_ref.fingerprint_tag(ref.tag, fp.ident()))
    return c.blob_bytes(manifest["config"]["digest"], manifest["config"]["size"])


def manifest_json(entry: store.Entry) -> bytes:
    with open(entry.file(layout.MANIFEST), "rb") as f:
        return f.read()


def listed(n: Node, text: str) -> dict[str, str]:
    """The index at the ref's tag: fingerprint -> manifest digest."""
    _, top = client(n, text).get_manifest()
    return {o.fingerprint: o.digest for o in index.offers_of(top)}


def test_nodes_of_two_fingerprints_pushing_to_one_ref_at_once_never_remove_each_others_snapshot(nodes, registry):
    a, b = nodes
    ref = f"{registry.address}/rewarm/shared:v1"
    for round in range(ROUNDS):
        mine = {a: entry_on(a, "worker", os.urandom(PAGES)), b: entry_on(b, "worker", os.urandom(PAGES))}
        outs = at_once((a, ("push", "worker", ref)), (b, ("push", "worker", ref)))
        assert [o.returncode for o in outs] == [0, 0], [o.stderr for o in outs]
        for n, entry in mine.items():   # each node pulls its own: this round's, of its fingerprint
            got = pull.pull(n.settings, ref, f"copy-{round}", caller=n.caller())
            assert got.entry.manifest.fingerprint == entry.manifest.fingerprint == n.fingerprint()
            assert got.entry.manifest.files == entry.manifest.files
            store.verify(got.entry, deep=True)
    per_fingerprint = {t for t in tags(a, ref) if t.startswith("v1-fp-")}
    assert per_fingerprint == {f"v1-fp-{a.fingerprint().ident()}", f"v1-fp-{b.fingerprint().ident()}"}


def test_the_index_a_race_left_short_is_filled_again_by_the_next_push(nodes, registry):
    """Registries have no compare-and-swap: an index written from a stale read can miss a line. The
    next push rebuilds it from the per-fingerprint tags, which no other push touches."""
    a, b = nodes
    ref = f"{registry.address}/rewarm/healed:v1"
    pushed_from_each((a, b), "healed", ref)
    truth = {fp.ident(): tags(a, ref)[f"v1-fp-{fp.ident()}"] for fp in (a.fingerprint(), b.fingerprint())}
    assert listed(a, ref) == truth
    c = client(a, ref)
    _, top = c.get_manifest()
    c.put_manifest(index.index(o for o in index.offers_of(top) if o.fingerprint == a.fingerprint().ident()), "v1")
    assert set(listed(a, ref)) == {a.fingerprint().ident()}                  # B's line lost, as a race would
    assert cli(a, "push", "healed", ref).returncode == 0                     # A pushes again, nothing new of its own
    assert listed(a, ref) == truth


def test_pushing_the_same_snapshot_again_changes_nothing(nodes, registry, tmp_path):
    a, b = nodes
    ref = f"{registry.address}/rewarm/same:v1"
    key = str(tmp_path / "sign.key")
    subprocess.run(["openssl", "genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256", "-out", key],
                   check=True, capture_output=True)
    pushed_from_each((a, b), "same", ref, PAGES, "--sign-key", key)
    before = tags(a, ref)
    assert len([t for t in before if t.endswith(".sig")]) == 2 and len(before) == 5   # v1, 2 fingerprints, signed
    out = cli(a, "push", "same", ref, "--sign-key", key)
    assert out.returncode == 0, out.stderr
    assert tags(a, ref) == before                        # every tag names what it named, signatures included
    again = [e for e in events(a.settings, "pushed") if e["ref"] == ref][-1]
    assert again["bytes"] == 0 and again["skipped_bytes"] >= PAGES and "unlisted" not in again


def test_a_push_publishes_the_entry_it_is_given_not_the_names_newest(nodes, registry):
    """The on-ready capture's push: its entry, though another capture of the name (another
    fingerprint) committed after it and is the name's newest. `rewarm push NAME` takes the newest."""
    a, _ = nodes
    ref = f"{registry.address}/rewarm/given:v1"
    captured = entry_on(a, "given", os.urandom(1 << 20))
    later = entry_on(dataclasses.replace(a, kernel=OTHER_KERNEL), "given", os.urandom(1 << 20))
    st = store.Store(a.settings.store)
    assert [e.ident for e in st.entries("default", "given")] == [later.ident, captured.ident]
    done = push.push_entry(a.settings, captured, ref, caller=Caller(quiet=True))
    assert done.entry == captured and done.ref == f"{registry.address}/rewarm/given:v1-fp-{a.fingerprint().ident()}"
    assert pushed_config(a, ref, a.fingerprint()) == manifest_json(captured)
    assert set(listed(a, ref)) == {a.fingerprint().ident()}                  # nothing of the later one went up
    assert [e["entry"] for e in events(a.settings, "pushed") if e["ref"] == ref] == [captured.ident]
    assert cli(a, "push", "given", ref).returncode == 0
    assert pushed_config(a, ref, dataclasses.replace(a, kernel=OTHER_KERNEL).fingerprint()) == manifest_json(later)


def test_a_node_whose_fingerprint_none_fits_is_refused_naming_each_on_offer_and_how_it_differs(nodes, registry):
    a, b = nodes
    ref = f"{registry.address}/rewarm/mixed:v1"
    pushed_from_each((a, b), "mixed", ref)
    stranger = dataclasses.replace(a, kernel="5.10.0-stranger")
    with pytest.raises(PullRefused) as refused:
        pull.pull(stranger.settings, ref, "mixed-copy", caller=stranger.caller())
    why = str(refused.value)
    assert refused.value.reason_code is ReasonCode.NOT_FITTING
    assert "none of its 2 snapshots fits this container on this node" in why
    for n in (a, b):
        assert f"fingerprint {n.fingerprint().ident()}" in why
        assert f"kernel: snapshot has {n.fingerprint().kernel!r}, this container/node has '5.10.0-stranger'" in why
    assert store.Store(a.settings.store).entries("default", "mixed-copy") == []
    failed = [e for e in events(a.settings, "pull-failed") if e["snapshot"] == "mixed-copy"][-1]
    assert failed["code"] == ReasonCode.NOT_FITTING.value


def test_the_operators_pull_takes_the_newest_of_an_index_or_the_fingerprint_its_tag_names(nodes, registry):
    a, b = nodes
    ref = f"{registry.address}/rewarm/operator:v1"
    newer = entry_on(a, "operator", os.urandom(1 << 20), created="2026-06-01T00:00:00Z")
    older = entry_on(b, "operator", os.urandom(1 << 20), created="2026-01-01T00:00:00Z")
    for n in (a, b):   # the older capture is pushed last: newest is by capture, not by push
        assert cli(n, "push", "operator", ref).returncode == 0
    out = cli(a, "pull", ref, "--name", "newest")
    assert out.returncode == 0, out.stderr
    got = store.Store(a.settings.store).entries("default", "newest")[0]
    assert got.manifest.files == newer.manifest.files and got.manifest.fingerprint == a.fingerprint()
    named = f"{ref}-fp-{b.fingerprint().ident()}"
    out = cli(a, "pull", named, "--name", "named")
    assert out.returncode == 0, out.stderr
    got = store.Store(a.settings.store).entries("default", "named")[0]
    assert got.manifest.files == older.manifest.files and got.manifest.fingerprint == b.fingerprint()


def test_a_ref_pushed_before_per_fingerprint_tags_still_pulls_and_a_new_push_keeps_it(nodes, registry):
    """The old form: TAG names one manifest, no fingerprint in its annotations. It pulls as before;
    a pull for a container checks its fingerprint (from its manifest.json) before any byte; a push of
    another fingerprint lists it in TAG's new index instead of removing it."""
    a, b = nodes
    ref = f"{registry.address}/rewarm/legacy:v1"
    first = f"{registry.address}/rewarm/legacy:staging"
    old = entry_on(a, "legacy", os.urandom(1 << 20))
    assert cli(a, "push", "legacy", first).returncode == 0
    c = client(a, ref)
    _, manifest = c.get_manifest(f"staging-fp-{a.fingerprint().ident()}")
    plain = {k: v for k, v in manifest["annotations"].items() if not k.startswith(index.FINGERPRINT_KEY)}
    old_digest = c.put_manifest({**manifest, "annotations": plain}, "v1")["digest"]   # as earlier rewarm wrote it

    out = cli(b, "pull", ref, "--name", "as-before")
    assert out.returncode == 0, out.stderr
    assert store.Store(b.settings.store).entries("default", "as-before")[0].manifest.files == old.manifest.files
    assert pull.pull(a.settings, ref, "fits", caller=a.caller()).digest == old_digest
    with pytest.raises(PullRefused, match=f"kernel: snapshot has '[^']+', this container/node has '{OTHER_KERNEL}'"):
        pull.pull(b.settings, ref, "does-not-fit", caller=b.caller())
    assert store.Store(b.settings.store).entries("default", "does-not-fit") == []

    entry_on(b, "legacy", os.urandom(1 << 20))
    assert cli(b, "push", "legacy", ref).returncode == 0
    assert listed(a, ref)[a.fingerprint().ident()] == old_digest             # the old snapshot, now a line
    assert pull.pull(a.settings, ref, "fits-still", caller=a.caller()).digest == old_digest
    assert pull.pull(b.settings, ref, "b-own", caller=b.caller()).entry.manifest.fingerprint == b.fingerprint()


def test_signed_and_encrypted_snapshots_of_two_fingerprints_each_pull_verified_and_opened(nodes, registry, tmp_path):
    """Each per-fingerprint manifest is signed (cosign's layout, its own digest) and its blobs sealed
    (ocicrypt's): a node that requires signatures pulls its own, verified and decrypted."""
    key, pub = str(tmp_path / "sign.key"), str(tmp_path / "sign.pub")
    seal, open_ = str(tmp_path / "seal.pub"), str(tmp_path / "seal.key")
    for private, public in ((key, pub), (open_, seal)):
        subprocess.run(["openssl", "genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256", "-out",
                        private], check=True, capture_output=True)
        subprocess.run(["openssl", "pkey", "-in", private, "-pubout", "-out", public], check=True, capture_output=True)
    ref = f"{registry.address}/rewarm/sealed:v1"
    sealed = {}
    for n in nodes:
        pages = os.urandom(1 << 20)
        sealed[n] = entry_on(n, "sealed", pages)
        out = cli(n, "push", "sealed", ref, "--sign-key", key, "--encrypt-to", seal)
        assert out.returncode == 0, out.stderr
    for n in nodes:
        strict = dataclasses.replace(n.settings, require_signature=True, signature_keys=(pub,), decryption_keys=(open_,))
        got = pull.pull(strict, ref, "sealed-copy", caller=n.caller())
        assert got.entry.manifest.files == sealed[n].manifest.files
        store.verify(got.entry, deep=True)
        c = client(n, ref)
        assert c.find_manifest(f"{got.digest.replace(':', '-')}.sig") is not None   # signed: this very digest
        _, own = c.get_manifest(got.digest)
        assert all(x["mediaType"].endswith("+encrypted") for x in own["layers"])
    unsigned = dataclasses.replace(nodes[0].settings, require_signature=True, signature_keys=(seal,),
                                   decryption_keys=(open_,))
    with pytest.raises(PullRefused, match="no signature there verifies"):
        pull.pull(unsigned, ref, "stranger-signed", caller=nodes[0].caller())


def test_an_index_line_says_which_node_facts_its_snapshot_has(nodes, registry):
    a, b = nodes
    ref = f"{registry.address}/rewarm/facts:v1"
    pushed_from_each((a, b), "facts", ref)
    _, top = client(a, ref).get_manifest()
    lines = {d["annotations"][index.FINGERPRINT_KEY]: d["annotations"] for d in top["manifests"]}
    assert json.loads(lines[b.fingerprint().ident()][index.FACTS_KEY])["kernel"] == OTHER_KERNEL
    assert lines[a.fingerprint().ident()][index.FACTS_KEY] == facts_of(a.fingerprint())
