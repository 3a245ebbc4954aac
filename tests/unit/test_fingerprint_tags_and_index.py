"""One snapshot-ref, one snapshot per fingerprint: the per-fingerprint tags, the index's lines and
the words a pull refuses with when none fits. Plain values, no registry needed (the registry's side
is tests/system/test_registry_fingerprints.py)."""
from __future__ import annotations

import dataclasses
import json
import re

import pytest

from runtime.registry import index
from runtime.registry.media_types import OCI_INDEX, OCI_MANIFEST
from runtime.engine.formats import per_fingerprint
from runtime.model import registry_ref
from runtime.model.errors import InvalidInput
from runtime.model.fingerprint import Fingerprint

TAG_GRAMMAR = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._-]{0,127}")
HERE = Fingerprint(image="img@sha256:1", args=("/w",), cwd="/", env={"A": "h"}, env_key="k1", arch="x86_64",
                   cpu="GenuineIntel 85 avx512 ab12", kernel="6.1.0-21-amd64", criu="4.2", runtime="runc 1.1")


def offer(fp: Fingerprint, created: str = "2026-01-01T00:00:00Z", digest: str = "a") -> index.Offer:
    return index.Offer("sha256:" + digest * 64, 100, OCI_MANIFEST, fp.ident(), created, per_fingerprint.facts_of(fp))


def test_a_fingerprints_tag_is_the_refs_tag_and_its_ident_within_the_tag_grammar():
    assert registry_ref.fingerprint_tag("v1", HERE.ident()) == f"v1-fp-{HERE.ident()}"
    longest = registry_ref.fingerprint_tag("x" * 128, HERE.ident())
    assert len(longest) == 128 and TAG_GRAMMAR.fullmatch(longest) and longest.endswith(HERE.ident())
    # two long tags alike in their first 99 characters still get tags of their own
    assert registry_ref.fingerprint_tag("x" * 120 + "a", HERE.ident()) != registry_ref.fingerprint_tag(
        "x" * 120 + "b", HERE.ident())
    assert registry_ref.fingerprint_tag("x" * 108, HERE.ident()) == "x" * 108 + f"-fp-{HERE.ident()}"
    with pytest.raises(InvalidInput, match="fingerprint ident"):
        registry_ref.fingerprint_tag("v1", "../../x")


def test_an_index_lists_one_line_per_fingerprint_newest_first_and_reads_back_what_it_wrote():
    other = dataclasses.replace(HERE, kernel="6.12.0-1-amd64")
    older, newer = offer(HERE, "2026-01-01T00:00:00Z", "a"), offer(other, "2026-02-01T00:00:00Z", "b")
    written = index.index([older, newer])
    assert written["mediaType"] == OCI_INDEX
    assert [d["annotations"][index.FINGERPRINT_KEY] for d in written["manifests"]] == [other.ident(), HERE.ident()]
    assert index.offers_of(json.loads(json.dumps(written))) == [newer, older]
    replaced = offer(HERE, "2026-03-01T00:00:00Z", "c")
    assert index.merged(replaced, [newer, older]) == [replaced, newer]    # its fingerprint's line, not a second one


def test_an_index_keeps_at_most_its_limit_and_never_drops_the_push_that_writes_it():
    many = [offer(dataclasses.replace(HERE, kernel=f"k{i}"), f"2026-01-01T00:00:{i:02d}Z") for i in range(70)]
    mine = offer(dataclasses.replace(HERE, kernel="old"), "2020-01-01T00:00:00Z")
    kept = index.merged(mine, many)
    assert len(kept) == index.MAX_OFFERS and mine in kept
    assert many[-1] in kept and many[0] not in kept                         # the oldest others make room


@pytest.mark.parametrize("line", [
    {"digest": "sha256:" + "a" * 64, "size": 1, "mediaType": OCI_MANIFEST, "annotations": {}},          # no fingerprint
    {"digest": "sha256:" + "a" * 64, "size": 1, "mediaType": OCI_MANIFEST,
     "annotations": {index.FINGERPRINT_KEY: "../x"}},
    {"digest": "sha256:short", "size": 1, "mediaType": OCI_MANIFEST, "annotations": {index.FINGERPRINT_KEY: "a" * 16}},
    {"digest": "sha256:" + "a" * 64, "size": -1, "mediaType": OCI_MANIFEST,
     "annotations": {index.FINGERPRINT_KEY: "a" * 16}},
    {"digest": "sha256:" + "a" * 64, "size": 1, "mediaType": OCI_INDEX, "annotations": {index.FINGERPRINT_KEY: "a" * 16}},
])
def test_an_index_line_that_is_not_a_rewarm_snapshots_is_left_out(line):
    assert index.offers_of({"mediaType": OCI_INDEX, "manifests": [line]}) == []


def test_a_refusal_names_each_fingerprint_on_offer_and_how_it_differs_from_this_one():
    other_kernel = dataclasses.replace(HERE, kernel="6.12.0-1-amd64")
    other_cpu = dataclasses.replace(HERE, cpu="AuthenticAMD 25 avx2 cd34")
    here = dataclasses.replace(HERE, kernel="6.1.0-30-amd64")
    why = per_fingerprint.none_fits("reg.example.com/w:v1", [offer(other_kernel), offer(other_cpu)], here)
    assert "none of its 2 snapshots fits" in why and here.ident() in why
    assert f"fingerprint {other_kernel.ident()}" in why and f"fingerprint {other_cpu.ident()}" in why
    assert "kernel: snapshot has '6.12.0-1-amd64', this container/node has '6.1.0-30-amd64'" in why
    assert "cpu: snapshot has 'AuthenticAMD 25 avx2 cd34'" in why


def test_a_difference_the_index_does_not_show_is_said_so():
    same_node = dataclasses.replace(HERE, args=("/w", "--other"))
    assert per_fingerprint.how_it_differs(offer(same_node), HERE) == [
        "the container's args, cwd or environment differ (its index line does not show those)"]
    unreadable = dataclasses.replace(offer(same_node), facts='{"password": 1}')
    assert per_fingerprint.how_it_differs(unreadable, HERE) == ["its index line does not say how its fingerprint differs"]
    other_key = dataclasses.replace(HERE, env_key="k2")
    assert "fingerprint_key_file" in per_fingerprint.how_it_differs(offer(other_key), HERE)[0]


def test_an_index_line_shows_the_nodes_facts_and_never_the_containers_args_or_environment():
    facts = json.loads(per_fingerprint.facts_of(dataclasses.replace(HERE, args=("/w", "--token=s3cret"))))
    assert set(facts) == set(per_fingerprint.FACTS) and "s3cret" not in json.dumps(facts)
    assert "env" not in facts and facts["kernel"] == HERE.kernel
