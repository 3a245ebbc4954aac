"""One snapshot-ref, one snapshot per fingerprint: how pushes from nodes that differ (CPU features,
kernel, GPU driver) share a TAG without removing each other's snapshots, and which one a pull takes.

- **The truth: a tag per fingerprint.** A push puts its manifest under TAG-fp-IDENT
  (registry_ref.fingerprint_tag; IDENT is Fingerprint.ident() of the entry). Nodes of different
  fingerprints never write the same tag, so neither can remove the other's snapshot; a node that
  pushes its fingerprint again moves only its own tag (the same entry again: the same manifest).
- **A view: the index at TAG** (registry/index.py), rebuilt by every push from the
  per-fingerprint tags the registry lists and what the index listed, written only when it changes,
  then read back until it lists the push (MERGE_ROUNDS). A registry has no compare-and-swap on a
  tag: two pushes at once can still drop one line, which the next push to TAG puts back. No pull
  depends on it to find its own snapshot.
- **A pull for a container** (`Caller.fits`, pull on miss) takes TAG-fp-IDENT of that container's
  fingerprint here; without it, the index says which fingerprints there are and how each differs
  from this one (the refusal becomes the pod's cold-start reason); a single manifest at TAG (a push
  before per-fingerprint tags) is a candidate whose fingerprint is checked where its format tells it.
- **The operator's pull** (no container): a single manifest as before; of an index, the newest
  capture. A fingerprint is named by naming its tag, TAG-fp-IDENT.
"""
from __future__ import annotations

import dataclasses
import json

from runtime.snapshot import store
from runtime.registry import index
from runtime.registry.client import Fetched
from runtime.registry.index import Offer
from runtime.engine.formats import Transfer, recognised
from runtime.model import registry_ref
from runtime.model.errors import PullRefused, RegistryError
from runtime.model.events import ReasonCode
from runtime.model.fingerprint import Fingerprint, differences

# The fingerprint's fields an index line shows: what differs between nodes (and the image). The
# container's args, cwd and environment stay in the snapshot's own manifest.json.
FACTS = ("image", "arch", "cpu", "kernel", "criu", "runtime", "gpu", "env_key")
MERGE_ROUNDS = 5          # writes of the index before a push leaves it to the next one
MAX_TAGGED = 4 * index.MAX_OFFERS   # per-fingerprint tags a push looks at to rebuild the index
EXPLAINED = 5             # offers a refusal words, newest first


# --- push ---------------------------------------------------------------------------------------
def tag_of(tag: str, entry: store.Entry) -> str:
    """Where `entry` goes when pushed to TAG."""
    return registry_ref.fingerprint_tag(tag, entry.manifest.fingerprint.ident())


def notes_of(entry: store.Entry) -> dict[str, str]:
    """The annotations that say which fingerprint `entry` has, on its manifest and its index line."""
    fp = entry.manifest.fingerprint
    return index.notes(fp.ident(), entry.manifest.created, facts_of(fp))


def facts_of(fp: Fingerprint) -> str:
    every = fp.to_json()
    return json.dumps({k: every[k] for k in FACTS}, sort_keys=True, separators=(",", ":"))


def publish(t: Transfer, tag: str, mine: Offer) -> str | None:
    """List `mine` in the index at TAG; None once a read after the write lists it, else why not
    (the push stands either way: its own tag is what pulls use)."""
    try:
        for _ in range(MERGE_ROUNDS):
            listed = _listed(t, tag)
            tagged = _tagged(t, tag, listed)
            # the tag's word for this fingerprint: a push of it from another node may have come later
            own = next((o for o in tagged if o.fingerprint == mine.fingerprint), mine)
            offers = index.merged(own, [*tagged, *listed])
            if offers != listed:
                t.client.put_manifest(index.index(offers), tag)
            if own in _listed(t, tag):
                return None
    except RegistryError as e:
        return str(e)
    return f"other pushes to {tag} kept replacing the index ({MERGE_ROUNDS} writes): the next push lists it"


def _listed(t: Transfer, tag: str) -> list[Offer]:
    """What TAG offers now: its index's lines, or the single manifest an earlier push left there."""
    found = t.client.find_manifest(tag)
    if found is None:
        return []
    if index.is_index(found.body):
        return index.offers_of(found.body)
    old = _old_form(t, found)
    return [old] if old is not None else []


def _old_form(t: Transfer, found: Fetched) -> Offer | None:
    """The offer of a single manifest at TAG (pushed before per-fingerprint tags), where its format
    tells its fingerprint without a pull; None for anything else, which a push replaces as it always did."""
    fmt = recognised(found.body)
    try:
        fp = fmt.fingerprint(t, found.body) if fmt is not None else None
    except RegistryError:
        return None   # its manifest.json does not read: nothing a pull could take either
    if fp is None:
        return None
    created = (found.body.get("annotations") or {}).get(index.CREATED_KEY, "")
    return index.offer_of({"digest": found.digest, "size": found.size, "mediaType": found.body.get("mediaType")},
                          index.notes(fp.ident(), str(created), facts_of(fp)))


def _tagged(t: Transfer, tag: str, listed: list[Offer]) -> list[Offer]:
    """The offers of the per-fingerprint tags of TAG the registry lists (the truth the index is a
    view of); a line the index has already is taken as it is where its digest is the tag's."""
    prefix = registry_ref.fingerprint_tag(tag, "0" * 16)[:-16]
    try:
        names = [n for n in t.client.tags() if n.startswith(prefix)
                 and registry_ref.is_fingerprint_ident(n[len(prefix):])][:MAX_TAGGED]
    except RegistryError:
        return []   # a registry that does not list tags: the index keeps what it lists
    known = {o.fingerprint: o for o in listed}
    found = []
    for name in names:
        ident, digest = name[len(prefix):], t.client.manifest_digest(name)
        if digest is None:
            continue
        if ident in known and known[ident].digest == digest:
            found.append(known[ident])
            continue
        fetched = t.client.find_manifest(digest)
        offer = index.offer_of({"digest": digest, "size": fetched.size, "mediaType": fetched.body.get("mediaType")},
                               fetched.body.get("annotations") or {}) if fetched is not None else None
        if offer is not None and offer.fingerprint == ident:
            found.append(offer)
    return found


# --- pull ---------------------------------------------------------------------------------------
def choose(t: Transfer) -> Fetched:
    """The manifest a pull of the client's reference takes (see the module's docstring)."""
    ref, here = t.client.ref, t.caller.fits
    if here is not None and ref.tag and not ref.digest:
        own = t.client.find_manifest(registry_ref.fingerprint_tag(ref.tag, here.ident()))
        if own is not None:
            return own
    top = t.client.find_manifest()
    if top is None:   # for a pull on miss, the situation before the first push (a capture Job's)
        raise PullRefused(f"{ref}: no snapshot there yet (HTTP 404 from the registry)", code=ReasonCode.NO_SNAPSHOT)
    if not index.is_index(top.body):
        _refuse_unfitting(t, top, here)
        return top
    offers = index.offers_of(top.body)
    ident = here.ident() if here is not None else None
    chosen = next((o for o in offers if ident is None or o.fingerprint == ident), None)
    if chosen is None:
        raise PullRefused(none_fits(str(ref), offers, here), code=ReasonCode.NOT_FITTING)
    return t.client.fetch_manifest(chosen.digest)


def _refuse_unfitting(t: Transfer, single: Fetched, here: Fingerprint | None) -> None:
    """A single manifest for a container: refused before its bytes come where its fingerprint is
    known and differs (a Podman image's is known only once pulled: restore's gate judges it)."""
    if here is None:
        return
    fmt = recognised(single.body)
    recorded = fmt.fingerprint(t, single.body) if fmt is not None else None
    why = differences(recorded, here) if recorded is not None else []
    if why:
        raise PullRefused(f"{t.client.ref}: its snapshot does not fit this container on this node: "
                          + "; ".join(why), code=ReasonCode.NOT_FITTING)


def none_fits(ref: str, offers: list[Offer], here: Fingerprint | None) -> str:
    """Why no snapshot of an index is pulled: each fingerprint on offer (the newest EXPLAINED) and
    how it differs from this container's on this node."""
    if not offers:
        return f"{ref}: an index that lists no rewarm snapshot"
    assert here is not None   # the operator's pull takes the newest of any index that lists one
    lines = [f"fingerprint {o.fingerprint} (captured {o.created or 'at an unknown time'}): "
             + "; ".join(how_it_differs(o, here)) for o in offers[:EXPLAINED]]
    more = f" | and {len(offers) - EXPLAINED} older" if len(offers) > EXPLAINED else ""
    return (f"{ref}: none of its {len(offers)} snapshots fits this container on this node (fingerprint "
            f"{here.ident()}): " + " | ".join(lines) + more)


def how_it_differs(offer: Offer, here: Fingerprint) -> list[str]:
    """differences() between the offer's fingerprint and `here`, from the facts its index line
    shows: the container's own fields are not shown there, so a difference in those alone is said so."""
    try:
        facts = json.loads(offer.facts) if offer.facts else None
    except ValueError:
        facts = None
    if not isinstance(facts, dict) or not set(facts) <= set(FACTS):
        return ["its index line does not say how its fingerprint differs"]
    why = differences(dataclasses.replace(here, **facts), here)
    return why or ["the container's args, cwd or environment differ (its index line does not show those)"]
