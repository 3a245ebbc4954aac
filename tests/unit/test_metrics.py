"""The metrics from the event log, as the textfile (rewarm-hook poststop) and the agent's /metrics
serve them: counts by reason code (never by the reason's text), histograms whose buckets are kept
in the running totals, the store's gauges from its manifests, and the build. Each is read back the
way Prometheus reads it: prometheus_client's parser over the real exposition."""
from __future__ import annotations

import json
import os

import pytest
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from runtime.observe import logs, metrics
from runtime.snapshot import store
from runtime.model import layout
from runtime.model.events import EventKind, ReasonCode
from runtime.model.fingerprint import Fingerprint
from runtime.model.manifest import FileDigest, Manifest

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]
W = (("namespace", "team-a"), ("snapshot", "w"))

EVENTS: list[tuple[EventKind, dict[str, object]]] = [
    (EventKind.RESTORED, {"snapshot": "w", "seconds": 1.0,
                          "stages": {"criu": 0.4, "cuda_restore": 0.3, "resume": 0.25, "resume /wake_up?tags=kv": 0.1}}),
    (EventKind.RESTORED, {"snapshot": "w", "seconds": 0.3}),
    (EventKind.RESTORED, {"snapshot": "w", "seconds": 700}),                       # past the last bound: +Inf only
    (EventKind.COLD_START, {"snapshot": "w", "reason": "no snapshot team-a/w in the store yet",
                            "code": "no_snapshot"}),
    (EventKind.COLD_START, {"snapshot": "w", "reason": "runc restore failed (exit 1)", "code": "restore_failed"}),
    (EventKind.COLD_START, {"snapshot": 'odd"\nname\\', "reason": "no snapshot team-a/x"}),   # from before codes
    (EventKind.COLD_START, {"snapshot": "w", "reason": "x", "code": "a code from the future"}),
    (EventKind.RESTORE_REFUSED, {"snapshot": "w", "reason": "checksum mismatch", "code": "snapshot_damaged"}),
    (EventKind.CAPTURED, {"snapshot": "w", "seconds": 3, "bytes": 1000, "stages": {"checkpoint": 2.5, "commit": 0.4}}),
    (EventKind.CAPTURE_FAILED, {"snapshot": "w", "reason": "CRIU", "code": "capture_failed"}),
    (EventKind.PULLED, {"snapshot": "w", "bytes": 5 << 20, "seconds": 12.5}),
    (EventKind.PULL_FAILED, {"snapshot": "w", "reason": "not signed", "code": "pull_refused", "seconds": 0.2}),
    (EventKind.PUSHED, {"snapshot": "w", "bytes": 1 << 20, "skipped_bytes": 4 << 20, "seconds": 2}),
    (EventKind.PUSH_FAILED, {"snapshot": "w", "reason": "503", "code": "registry_error"}),
    (EventKind.STOPPED, {"snapshot": "w", "outcome": "restored"}),
]


def record(log: str, kind: EventKind, fields: dict[str, object]) -> None:
    logs.event(log, kind, namespace="team-a", **fields)


def samples(text: str) -> Samples:
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def textfile(path: str) -> Samples:
    with open(path) as f:
        return samples(f.read())


def scrape(log: str, store_root: str = "") -> Samples:
    """What the agent's /metrics answers: its registry's exposition."""
    return samples(generate_latest(metrics.live_registry(lambda: metrics.served(log, store_root))).decode())


@pytest.fixture
def log(tmp_path) -> str:
    path = str(tmp_path / "log" / "events.jsonl")
    for kind, fields in EVENTS:
        record(path, kind, fields)
    return path


def test_the_textfile_counts_events_by_reason_code_and_parses_even_with_a_newline_in_a_label(tmp_path, log):
    path = str(tmp_path / "collector" / "rewarm.prom")
    metrics.write(path, metrics.served(log))
    got = textfile(path)
    assert got[("rewarm_restores_total", W)] == 3
    assert got[("rewarm_cold_starts_total", (("code", "no_snapshot"), *W))] == 1
    assert got[("rewarm_cold_starts_total", (("code", "restore_failed"), *W))] == 1
    odd = (("code", "unknown"), ("namespace", "team-a"), ("snapshot", 'odd"\nname\\'))
    assert got[("rewarm_cold_starts_total", odd)] == 1                # no code: unknown; the label came back whole
    assert got[("rewarm_cold_starts_total", (("code", "unknown"), *W))] == 1   # a code it does not know
    # Failures are the codes of something broken: restore_failed and snapshot_damaged, not no_snapshot.
    failures = {labels: n for (name, labels), n in got.items() if name == "rewarm_restore_failures_total"}
    assert failures == {(("code", "restore_failed"), *W): 1, (("code", "snapshot_damaged"), *W): 1}
    assert got[("rewarm_restores_refused_total", (("code", "snapshot_damaged"), *W))] == 1
    assert got[("rewarm_capture_failures_total", (("code", "capture_failed"), *W))] == 1
    assert got[("rewarm_capture_bytes_sum", W)] == 1000
    assert got[("rewarm_containers_stopped_total", (("outcome", "restored"),))] == 1
    assert got[("rewarm_build_info", (("version", metrics.version()),))] == 1
    assert metrics.version() not in ("", "unknown")   # the installed distribution's


def test_restore_and_stage_durations_are_histograms_with_inclusive_bounds(tmp_path, log):
    got = scrape(log)
    les = ("0.25", "0.5", "1.0", "600.0", "+Inf")
    bucket = {le: got[("rewarm_restore_seconds_bucket", (("le", le), *W))] for le in les}
    assert bucket == {"0.25": 0, "0.5": 1, "1.0": 2, "600.0": 2, "+Inf": 3}   # 0.3, 1.0 (le is inclusive), 700
    assert got[("rewarm_restore_seconds_count", W)] == 3 and got[("rewarm_restore_seconds_sum", W)] == 701.3
    stages = {dict(labels)["stage"] for name, labels in got if name == "rewarm_restore_stage_seconds_count"}
    assert stages == {"criu", "cuda_restore", "resume"}   # a resume sequence's per-call keys are not labels
    assert got[("rewarm_restore_stage_seconds_bucket", (("le", "0.5"), ("stage", "criu")))] == 1
    assert got[("rewarm_capture_stage_seconds_bucket", (("le", "2.0"), ("stage", "checkpoint")))] == 0
    assert got[("rewarm_capture_stage_seconds_bucket", (("le", "4.0"), ("stage", "checkpoint")))] == 1
    assert set(metrics.HISTOGRAMS) == {name[len("rewarm_"):-len("_count")] for name, _ in got
                                       if name.endswith("_seconds_count")}


def test_pulls_and_pushes_count_their_bytes_seconds_and_failures_by_code(log):
    got = scrape(log)
    assert got[("rewarm_pulls_total", W)] == 1 and got[("rewarm_pull_bytes_total", W)] == 5 << 20
    assert got[("rewarm_pull_seconds_bucket", (("le", "15.0"), *W))] == 1
    assert got[("rewarm_pull_seconds_bucket", (("le", "8.0"), *W))] == 0
    assert got[("rewarm_pull_failures_total", (("code", "pull_refused"), *W))] == 1
    assert got[("rewarm_pushes_total", W)] == 1 and got[("rewarm_push_bytes_total", W)] == 1 << 20
    assert got[("rewarm_push_skipped_bytes_total", W)] == 4 << 20
    assert got[("rewarm_push_failures_total", (("code", "registry_error"), *W))] == 1


def test_a_scrape_that_asks_for_openmetrics_gets_the_same_samples_through_its_strict_parser(log):
    """Prometheus asks the agent for OpenMetrics first: that exposition must parse as strictly as
    Prometheus parses it (ordered buckets, +Inf, _total) and say what the text format says."""
    from prometheus_client.openmetrics import exposition, parser
    text = exposition.generate_latest(metrics.live_registry(lambda: metrics.served(log))).decode()
    families = list(parser.text_string_to_metric_families(text))
    assert {(s.name, tuple(sorted(s.labels.items()))): s.value for f in families for s in f.samples} == scrape(log)
    assert {f.name: f.type for f in families}["rewarm_restore_seconds"] == "histogram"


def test_the_totals_come_back_whole_from_their_state_file_form(log):
    totals = metrics.fold(log)
    again = metrics.Totals.from_json(json.loads(json.dumps(totals.to_json())))
    assert (again.counts, again.sums, again.histograms) == (totals.counts, totals.sums, totals.histograms)
    assert again.histograms["restore_seconds"][("team-a", "w")].counts[-1] == 1


@pytest.mark.parametrize("change", ["format", "buckets"])
def test_a_state_file_of_another_format_or_other_buckets_is_counted_afresh_from_the_log(log, change):
    metrics.fold(log)
    with open(log + metrics.STATE) as f:
        state = json.load(f)
    if change == "format":
        state["totals"]["format"] = 1
    else:   # counts of other bounds cannot be served as these: the log is folded again
        state["totals"]["histograms"]["restore_seconds"]["buckets"][0] = 0.05
    state["totals"]["counts"]["restores"] = [["team-a", "w", 1000]]
    with open(log + metrics.STATE, "w") as f:
        json.dump(state, f)
    record(log, EventKind.RESTORED, {"snapshot": "w", "seconds": 0.2})
    assert metrics.fold(log).counts["restores"] == {("team-a", "w"): 4}


def test_textfile_and_scrapes_agree_and_only_grow_across_rotations(tmp_path):
    """poststop's textfile and the agent's scrapes fold the same log by turns, through rotations:
    at each point they serve the same samples, and no counter, sum or bucket ever goes down."""
    log, path, bound = str(tmp_path / "events.jsonl"), str(tmp_path / "rewarm.prom"), 8 << 10
    seen: Samples = {}
    for round_ in range(12):
        for i in range(20):   # ~4 KiB of events: a rotation every other round
            kind, fields = EVENTS[(round_ * 20 + i) % len(EVENTS)]
            logs.append(log, logs.encode({"event": kind.value, "namespace": "team-a", **fields}), bound)
        metrics.write(path, metrics.served(log))
        written, scraped = textfile(path), scrape(log)
        assert written == scraped
        assert all(scraped[key] >= seen.get(key, 0) for key in scraped)
        assert set(seen) <= set(scraped)
        seen = scraped
    assert os.path.exists(logs.previous(log))
    assert seen[("rewarm_restores_total", W)] == 12 * 20 // len(EVENTS) * 3


def commit_entry(root: str, name: str, sizes: dict[str, int]) -> store.Entry:
    st = store.Store(root).ensure()
    with st.staging() as staging:
        for rel, size in sizes.items():
            os.makedirs(os.path.dirname(os.path.join(staging, rel)), exist_ok=True)
            with open(os.path.join(staging, rel), "wb") as f:
                f.write(os.urandom(size))
        fp = Fingerprint(image="img@sha256:1", args=("/w",), cwd="/", env={}, env_key="", arch="x86_64", cpu="c",
                         kernel="6", criu="4", runtime="runc")
        manifest = Manifest(namespace="team-a", name=name, created="2026-12-01T00:00:00Z", fingerprint=fp,
                            fingerprint_id=fp.ident(), source={"container_id": "c"},
                            files={rel: FileDigest(size, "") for rel, size in sizes.items()})
        return st.commit(staging, manifest)


def test_the_store_gauges_come_from_the_manifests_not_a_walk_of_the_files(tmp_path, log):
    root = str(tmp_path / "store")
    entry = commit_entry(root, "w", {layout.INVENTORY: 100, "checkpoint/pages-1.img": 5000})
    commit_entry(root, "v", {layout.INVENTORY: 10})
    os.truncate(entry.file("checkpoint/pages-1.img"), 0)   # a walk of the files would see 100 bytes here
    broken = commit_entry(root, "b", {layout.INVENTORY: 7})
    os.unlink(broken.file(layout.MANIFEST))                  # no manifest: not an entry, not counted
    got = scrape(log, root)
    fs = os.statvfs(root)
    assert got[("rewarm_store_used_bytes", ())] == 5110 and got[("rewarm_store_entries", ())] == 2
    assert got[("rewarm_store_size_bytes", ())] == fs.f_blocks * fs.f_frsize
    assert 0 < got[("rewarm_store_free_bytes", ())] <= got[("rewarm_store_size_bytes", ())]
    assert ("rewarm_store_used_bytes", ()) not in scrape(log, str(tmp_path / "no-store-yet"))


def test_an_unknown_code_is_unknown_and_only_broken_things_are_failures():
    from runtime.model.events import reason_code
    assert reason_code(None) is reason_code(["x"]) is reason_code("x") is ReasonCode.UNKNOWN
    assert reason_code("timeout") is ReasonCode.TIMEOUT
    expected = {c for c in ReasonCode if not c.is_failure}
    assert expected == {ReasonCode.UNKNOWN, ReasonCode.NO_SNAPSHOT, ReasonCode.NOT_FITTING, ReasonCode.SNAPSHOT_CHANGED,
                        ReasonCode.UNSUPPORTED, ReasonCode.CONTAINER_EXISTS, ReasonCode.INVALID_ANNOTATION,
                        ReasonCode.PULL_REFUSED, ReasonCode.PULL_TIMEOUT}
