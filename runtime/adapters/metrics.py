"""Prometheus metrics of rewarm's lifecycle events, for a node exporter's textfile collector.
Derived from the event log each time, so the numbers survive restarts and stay consistent with it;
prometheus_client writes the text format (escaping included) and the file with one rename."""
from __future__ import annotations

import os
from collections import defaultdict
from typing import Any, Callable, Iterable, Iterator

from prometheus_client import CollectorRegistry, write_to_textfile
from prometheus_client.core import CounterMetricFamily, Metric, SummaryMetricFamily

from runtime.model.events import EventKind

REASONS = (("no snapshot", "missing"), ("does not fit", "incompatible"), ("checksum", "corrupt"),
           ("manifest", "corrupt"), ("size", "corrupt"), ("invalid", "invalid"), ("unknown annotation", "invalid"),
           ("restore failed", "failed"), ("hook", "failed"), ("longer than", "timeout"))
SNAPSHOT = ("namespace", "snapshot")


def reason_class(reason: str) -> str:
    return next((label for needle, label in REASONS if needle in reason), "other")


class _Events:
    """A collector over the event log: every metric is a count or a sum of events, read afresh at
    each collection (a scrape of `rewarm agent`'s /metrics, or a textfile write)."""

    def __init__(self, read: Callable[[], Iterable[dict[str, Any]]]):
        self.read = read

    def collect(self) -> Iterator[Metric]:
        counts: dict[str, dict[tuple[str, ...], float]] = defaultdict(lambda: defaultdict(float))
        sums: dict[str, dict[tuple[str, ...], list[float]]] = defaultdict(lambda: defaultdict(lambda: [0.0, 0.0]))
        for e in self.read():
            snap, kind = (str(e.get("namespace", "")), str(e.get("snapshot", ""))), e.get("event")
            if kind == EventKind.RESTORED.value:
                counts["restores"][snap] += 1
                _add(sums["restore_seconds"][snap], e.get("seconds", 0))
            elif kind == EventKind.COLD_START.value:
                counts["cold_starts"][(*snap, reason_class(e.get("reason", "")))] += 1
            elif kind == EventKind.RESTORE_REFUSED.value:
                counts["restores_refused"][(*snap, reason_class(e.get("reason", "")))] += 1
            elif kind == EventKind.CAPTURED.value:
                counts["captures"][snap] += 1
                _add(sums["capture_seconds"][snap], e.get("seconds", 0))
                _add(sums["capture_bytes"][snap], e.get("bytes", 0))
            elif kind == EventKind.CAPTURE_FAILED.value:
                counts["capture_failures"][snap] += 1
            elif kind == EventKind.STOPPED.value:
                counts["containers_stopped"][(str(e.get("outcome", "unknown")),)] += 1
        for name, (doc, labels) in COUNTERS.items():
            if counts.get(name):
                family = CounterMetricFamily(f"rewarm_{name}", doc, labels=labels)
                for values, n in sorted(counts[name].items()):
                    family.add_metric(values, n)
                yield family
        for name, doc in SUMMARIES.items():
            if sums.get(name):
                summary = SummaryMetricFamily(f"rewarm_{name}", doc, labels=SNAPSHOT)
                for values, (count, total) in sorted(sums[name].items()):
                    summary.add_metric(values, count_value=int(count), sum_value=total)
                yield summary


def _add(acc: list[float], value: Any) -> None:
    acc[0] += 1
    acc[1] += float(value or 0)


COUNTERS = {
    "restores": ("Containers restored from a snapshot.", SNAPSHOT),
    "cold_starts": ("Annotated containers that cold-started, by reason.", (*SNAPSHOT, "reason")),
    "restores_refused": ("Restores refused with rewarm.dev/fallback: fail, by reason.", (*SNAPSHOT, "reason")),
    "captures": ("Snapshots captured.", SNAPSHOT),
    "capture_failures": ("Captures that failed (the worker kept running).", SNAPSHOT),
    "containers_stopped": ("Annotated containers stopped, by how they had started.", ("outcome",)),
}
SUMMARIES = {
    "restore_seconds": "Seconds spent in restores (create to restored).",
    "capture_seconds": "Seconds spent capturing.",
    "capture_bytes": "Bytes of snapshots captured.",
}


def live_registry(read: Callable[[], Iterable[dict[str, Any]]]) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Events(read))
    return registry


def registry_of(events: Iterable[dict[str, Any]]) -> CollectorRegistry:
    fixed = list(events)
    return live_registry(lambda: fixed)


def write(path: str, events: list[dict[str, Any]]) -> None:
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    write_to_textfile(path, registry_of(events))
    os.chmod(path, 0o644)   # the node exporter reads it as its own user
