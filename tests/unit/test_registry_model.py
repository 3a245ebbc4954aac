"""Registry references, the pod annotations that name them, and the native layout's checks on a
pulled manifest: plain values, no registry needed."""
from __future__ import annotations

import pytest

from runtime.registry import client, native
from runtime.model import annotations as ann
from runtime.model import registry_ref
from runtime.model.errors import InvalidInput, RegistryError
from runtime.model.manifest import FileDigest
from runtime.model.settings import Settings


@pytest.mark.parametrize("text,registry,repo,reference", [
    ("127.0.0.1:5000/rewarm/worker:v1", "127.0.0.1:5000", "rewarm/worker", "v1"),
    ("localhost/w:latest", "localhost", "w", "latest"),
    ("registry.example.com/team/llm/worker@sha256:" + "a" * 64, "registry.example.com", "team/llm/worker",
     "sha256:" + "a" * 64),
])
def test_references_are_parsed_with_the_registry_written_out(text, registry, repo, reference):
    ref = registry_ref.parse(text)
    assert (ref.registry, ref.repository, ref.reference, str(ref)) == (registry, repo, reference, text)


@pytest.mark.parametrize("text", ["worker:v1", "rewarm/worker:v1", "127.0.0.1:5000/Worker:v1",
                                  "127.0.0.1:5000/w", "127.0.0.1:5000/../w:v1", "a.b/w:v1 ; rm", "",
                                  "reg.example.com/w:v1\n"])
def test_bad_references_are_refused_naming_the_form(text):
    with pytest.raises(InvalidInput, match="REGISTRY/REPO:TAG"):
        registry_ref.parse(text)


@pytest.mark.parametrize("host, loopback", [
    ("localhost:5000", True), ("127.0.0.1:5000", True), ("127.8.9.10", True), ("[::1]:5000", True),
    ("127.attacker.example", False), ("127.0.0.1.nip.io", False), ("10.0.0.1:5000", False), ("[::2]", False)])
def test_only_a_loopback_address_counts_as_loopback_for_plain_http(host, loopback):
    assert registry_ref.parse(f"{host}/w:v1").is_loopback is loopback


def test_allowed_registries_match_whole_hosts_and_path_prefixes_only():
    ref = registry_ref.parse("reg.example.com:5000/team/worker:v1")
    assert registry_ref.allowed(ref, ("reg.example.com:5000",))
    assert registry_ref.allowed(ref, ("reg.example.com:5000/team",))
    assert not registry_ref.allowed(ref, ("reg.example.com:5000/te",))
    assert not registry_ref.allowed(ref, ("reg.example.com",))
    assert not registry_ref.allowed(ref, ())


SAME = "neither the registry itself nor in registry_redirect_hosts"


@pytest.mark.parametrize("registry, tls, target, allowed, why", [
    ("reg.example.com", True, "https://reg.example.com/v2/blobs/x", (), None),
    ("reg.example.com", True, "https://REG.example.com:443/v2/x", (), None),        # the same host, spelled out
    ("reg.example.com", True, "https://reg.example.com:8443/v2/x", (), SAME),       # another port: another service
    ("reg.example.com", True, "https://cdn.example.net/blob", (), SAME),
    ("reg.example.com", True, "https://cdn.example.net/blob", ("cdn.example.net",), None),
    ("reg.example.com", True, "https://cdn.example.net:8443/b", ("cdn.example.net",), SAME),
    ("reg.example.com", True, "https://cdn.example.net:8443/b", ("cdn.example.net:8443",), None),
    ("reg.example.com", True, "https://eu.cdn.example.net/b", ("*.cdn.example.net",), None),
    ("reg.example.com", True, "https://cdn.example.net/b", ("*.cdn.example.net",), SAME),
    ("reg.example.com", True, "https://evilcdn.example.net/b", ("*.cdn.example.net",), SAME),
    ("reg.example.com", True, "https://u:p@10.99.0.1/x", (), SAME),
    ("reg.example.com", True, "http://reg.example.com/v2/x", ("reg.example.com",), "it leaves TLS for plain HTTP"),
    ("reg.example.com", True, "http://cdn.example.net/b", ("cdn.example.net",), "it leaves TLS for plain HTTP"),
    ("reg.example.com", True, "file:///etc/passwd", (), "not an http(s) URL"),
    ("reg.example.com", True, "https://reg.example.com:99999/x", (), "not a valid URL"),
    ("reg.example.com", True, "https://[::1/x", (), "not a valid URL"),
    ("127.0.0.1:5000", False, "http://127.0.0.1:5000/v2/x", (), None),
    ("127.0.0.1:5000", False, "http://127.0.0.1:5001/v2/x", (), SAME),
    ("127.0.0.1:5000", False, "http://127.0.0.1:5001/v2/x", ("127.0.0.1:5001",), None),
    ("127.0.0.1:5000", False, "http://localhost:5000/v2/x", (), SAME),
    ("127.0.0.1:5000", False, "http://10.99.0.1:8081/latest/meta-data/iam", ("10.99.0.1:8081",),
     "a loopback registry is followed only to loopback addresses"),
    ("[::1]:5000", False, "http://[::1]:5000/v2/x", (), None),
    ("[::1]:5000", False, "http://[::2]:5000/v2/x", ("[::2]:5000",),
     "a loopback registry is followed only to loopback addresses"),
])
def test_a_redirect_stays_on_the_registry_or_goes_where_the_config_says(registry, tls, target, allowed, why):
    assert client.redirect_refusal(registry, tls, target, allowed) == why


def test_a_clients_bounds_are_the_nodes_pull_stall_s_and_registry_redirect_hosts():
    assert client.Bounds() == client.Bounds.of(Settings())
    assert client.Bounds.of(Settings(pull_stall_s=7, registry_redirect_hosts=("cdn.example.net",))) \
        == client.Bounds(7.0, ("cdn.example.net",))


def test_snapshot_ref_and_push_annotations_are_parsed_and_checked():
    r = ann.parse({ann.SNAPSHOT: "w", ann.SNAPSHOT_REF: "localhost:5000/w:v1", ann.PUSH: "on-capture"}, {})
    assert r.snapshot_ref == "localhost:5000/w:v1" and r.push is ann.Push.ON_CAPTURE
    with pytest.raises(InvalidInput, match="invalid rewarm.dev/snapshot-ref"):
        ann.parse({ann.SNAPSHOT: "w", ann.SNAPSHOT_REF: "w:v1"}, {})
    with pytest.raises(InvalidInput, match="invalid rewarm.dev/push: 'always'"):
        ann.parse({ann.SNAPSHOT: "w", ann.SNAPSHOT_REF: "localhost:5000/w:v1", ann.PUSH: "always"}, {})
    with pytest.raises(InvalidInput, match="needs rewarm.dev/snapshot-ref"):
        ann.parse({ann.SNAPSHOT: "w", ann.PUSH: "on-capture"}, {})


FILES = {"checkpoint/pages-1.img": FileDigest(native.CHUNK_BYTES + 10, "b" * 64),
         "spec.dump": FileDigest(5, "c" * 64)}


def test_large_files_are_cut_into_pieces_and_small_ones_keep_their_digest():
    pieces = native.split(FILES)
    assert [(p.path, p.offset, p.size, p.whole) for p in pieces] == [
        ("checkpoint/pages-1.img", 0, native.CHUNK_BYTES, False),
        ("checkpoint/pages-1.img", native.CHUNK_BYTES, 10, False), ("spec.dump", 0, 5, True)]
    assert pieces[2].digest == "sha256:" + "c" * 64


def pulled(layers):
    return {"config": {"mediaType": native.CONFIG_TYPE, "digest": "sha256:" + "0" * 64, "size": 10},
            "layers": layers}


def layer(path, offset, size, digest="d", kind=native.CHUNK_TYPE):
    return {"mediaType": kind, "digest": "sha256:" + digest * 64, "size": size,
            "annotations": {native.PATH_KEY: path, native.OFFSET_KEY: str(offset)}}


@pytest.mark.parametrize("layers,why", [
    ([layer("../etc/x", 0, 5)], "outside the snapshot"),
    ([layer("/etc/x", 0, 5)], "outside the snapshot"),
    ([layer("checkpoint/pages-1.img", 0, native.CHUNK_BYTES), layer("checkpoint/pages-1.img", native.CHUNK_BYTES + 1, 9),
      layer("spec.dump", 0, 5, "c", native.FILE_TYPE)], "gap or overlap"),
    ([layer("checkpoint/pages-1.img", 0, native.CHUNK_BYTES + 10), layer("spec.dump", 0, 5, "e", native.FILE_TYPE)],
     "digest differs"),
    ([layer("spec.dump", 0, 5, "c", native.FILE_TYPE)], "no layer for checkpoint/pages-1.img"),
])
def test_a_pulled_manifest_must_describe_exactly_the_files_of_its_manifest_json(layers, why):
    with pytest.raises(RegistryError, match=why):
        native.check_against(native.pieces_of(pulled(layers))[1], FILES)
