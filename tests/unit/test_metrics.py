"""The metrics textfile from the event log: counts and sums per snapshot, in a file that a node
exporter can always parse, whatever a label holds."""
from __future__ import annotations

import json

from prometheus_client.parser import text_string_to_metric_families

from runtime.adapters import metrics

EVENTS = [
    {"event": "restored", "namespace": "team-a", "snapshot": "w", "seconds": 1.5},
    {"event": "restored", "namespace": "team-a", "snapshot": "w", "seconds": 0.5},
    {"event": "cold-start", "namespace": "team-a", "snapshot": 'odd"\nname\\', "reason": "no snapshot team-a/x"},
    {"event": "captured", "namespace": "team-a", "snapshot": "w", "seconds": 3, "bytes": 1000},
    {"event": "stopped", "outcome": "restored"},
]


def samples(path: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    with open(path) as f:
        return {(s.name, tuple(sorted(s.labels.items()))): s.value
                for family in text_string_to_metric_families(f.read()) for s in family.samples}


def test_the_textfile_counts_and_sums_events_and_parses_even_with_a_newline_in_a_label(tmp_path):
    path = str(tmp_path / "collector" / "rewarm.prom")
    metrics.write(path, metrics.totals_of(EVENTS))
    got = samples(path)
    w = (("namespace", "team-a"), ("snapshot", "w"))
    assert got[("rewarm_restores_total", w)] == 2
    assert got[("rewarm_restore_seconds_sum", w)] == 2.0 and got[("rewarm_restore_seconds_count", w)] == 2
    assert got[("rewarm_capture_bytes_sum", w)] == 1000
    odd = (("namespace", "team-a"), ("reason", "missing"), ("snapshot", 'odd"\nname\\'))
    assert got[("rewarm_cold_starts_total", odd)] == 1                 # the label came back whole
    assert got[("rewarm_containers_stopped_total", (("outcome", "restored"),))] == 1


def test_the_totals_come_back_whole_from_their_state_file_form():
    totals = metrics.totals_of(EVENTS)
    again = metrics.Totals.from_json(json.loads(json.dumps(totals.to_json())))
    assert again.counts == totals.counts and again.sums == totals.sums
