"""Prometheus metrics of rewarm's lifecycle events: for a node exporter's textfile collector
(rewritten by `rewarm-hook poststop`) and `rewarm agent`'s /metrics.

Every metric is a running count or sum over the event log. The totals are kept in a state file
beside the log (EVENT_LOG.totals.json, with the log position they reach): each reader folds in only
the lines appended since, so a scrape or a container's stop costs what is new, not the whole log,
and the counters keep counting when the log rotates. prometheus_client writes the text format
(escaping included) and the file with one rename."""
from __future__ import annotations

import fcntl
import json
import os
import sys
from typing import Any, Callable, Iterable, Iterator, Mapping

from prometheus_client import CollectorRegistry, write_to_textfile
from prometheus_client.core import CounterMetricFamily, Metric, SummaryMetricFamily

from runtime.adapters import logs
from runtime.model.events import EventKind

REASONS = (("no snapshot", "missing"), ("does not fit", "incompatible"), ("checksum", "corrupt"),
           ("manifest", "corrupt"), ("size", "corrupt"), ("invalid", "invalid"), ("unknown annotation", "invalid"),
           ("restore failed", "failed"), ("hook", "failed"), ("longer than", "timeout"))
SNAPSHOT = ("namespace", "snapshot")
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
STATE = ".totals.json"       # EVENT_LOG.totals.json: the totals and the log position they reach
STATE_LOCK = ".totals.lock"  # one fold at a time: poststop hooks and scrapes fold at once


def reason_class(reason: str) -> str:
    return next((label for needle, label in REASONS if needle in reason), "other")


Labels = tuple[str, ...]


class Totals:
    """The counts and the (count, sum) pairs of every metric, by label values, over the events
    added so far."""

    def __init__(self) -> None:
        self.counts: dict[str, dict[Labels, float]] = {}
        self.sums: dict[str, dict[Labels, tuple[float, float]]] = {}

    def add(self, e: Mapping[str, Any]) -> None:
        snap, kind = (str(e.get("namespace", "")), str(e.get("snapshot", ""))), e.get("event")
        if kind == EventKind.RESTORED.value:
            self._count("restores", snap)
            self._sum("restore_seconds", snap, e.get("seconds"))
        elif kind == EventKind.COLD_START.value:
            self._count("cold_starts", (*snap, reason_class(str(e.get("reason", "")))))
        elif kind == EventKind.RESTORE_REFUSED.value:
            self._count("restores_refused", (*snap, reason_class(str(e.get("reason", "")))))
        elif kind == EventKind.CAPTURED.value:
            self._count("captures", snap)
            self._sum("capture_seconds", snap, e.get("seconds"))
            self._sum("capture_bytes", snap, e.get("bytes"))
        elif kind == EventKind.CAPTURE_FAILED.value:
            self._count("capture_failures", snap)
        elif kind == EventKind.STOPPED.value:
            self._count("containers_stopped", (str(e.get("outcome", "unknown")),))

    def _count(self, name: str, labels: Labels) -> None:
        by = self.counts.setdefault(name, {})
        by[labels] = by.get(labels, 0.0) + 1

    def _sum(self, name: str, labels: Labels, value: Any) -> None:
        by = self.sums.setdefault(name, {})
        count, total = by.get(labels, (0.0, 0.0))
        by[labels] = (count + 1, total + (float(value) if isinstance(value, (int, float)) else 0.0))

    def families(self) -> Iterator[Metric]:
        for name, (doc, labels) in COUNTERS.items():
            if self.counts.get(name):
                family = CounterMetricFamily(f"rewarm_{name}", doc, labels=labels)
                for values, n in sorted(self.counts[name].items()):
                    family.add_metric(values, n)
                yield family
        for name, doc in SUMMARIES.items():
            if self.sums.get(name):
                summary = SummaryMetricFamily(f"rewarm_{name}", doc, labels=SNAPSHOT)
                for values, (count, total) in sorted(self.sums[name].items()):
                    summary.add_metric(values, count_value=int(count), sum_value=total)
                yield summary

    def to_json(self) -> dict[str, Any]:
        return {"counts": {name: [[*labels, n] for labels, n in by.items()] for name, by in self.counts.items()},
                "sums": {name: [[*labels, c, s] for labels, (c, s) in by.items()] for name, by in self.sums.items()}}

    @classmethod
    def from_json(cls, raw: Any) -> "Totals":
        """Raises ValueError for what to_json did not write."""
        totals = cls()
        try:
            for name, rows in raw["counts"].items():
                totals.counts[name] = {tuple(map(str, row[:-1])): float(row[-1]) for row in rows}
            for name, rows in raw["sums"].items():
                totals.sums[name] = {tuple(map(str, row[:-2])): (float(row[-2]), float(row[-1])) for row in rows}
        except (KeyError, TypeError, AttributeError, IndexError) as e:
            raise ValueError(f"not metric totals: {e}") from e
        return totals


def totals_of(events: Iterable[Mapping[str, Any]]) -> Totals:
    totals = Totals()
    for e in events:
        totals.add(e)
    return totals


def fold(event_log: str) -> Totals:
    """The totals over every event the log has had: the state file's, plus the lines appended
    since the position it reaches (all of the log and its previous file the first time)."""
    try:
        lock = os.open(event_log + STATE_LOCK, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    except FileNotFoundError:
        return Totals()   # no log directory: no event yet
    except OSError as e:   # a directory this reader cannot write: count afresh, keep nothing
        print(f"rewarm: metrics of {event_log} counted without their state file: {e}", file=sys.stderr)
        return _fold_from(event_log, Totals(), logs.Position())[0]
    try:
        fcntl.flock(lock, fcntl.LOCK_EX)
        totals, start = _load(event_log + STATE)
        totals, reached = _fold_from(event_log, totals, start)
        if reached != start:
            _save(event_log + STATE, totals, reached)
        return totals
    finally:
        os.close(lock)


def _fold_from(event_log: str, totals: Totals, at: logs.Position) -> tuple[Totals, logs.Position]:
    for line, at in logs.lines_after(event_log, at):
        record = logs.record_of(line)
        if record is not None:
            totals.add(record)
    return totals, at


def _load(path: str) -> tuple[Totals, logs.Position]:
    """The saved totals and position; none (count from the start of the log) where the file is
    missing or unreadable."""
    try:
        with open(path, encoding="utf-8") as f:
            raw = json.load(f)
        return Totals.from_json(raw["totals"]), logs.Position.from_json(raw["position"])
    except FileNotFoundError:
        return Totals(), logs.Position()
    except (OSError, ValueError, KeyError, TypeError) as e:
        print(f"rewarm: metric totals {path} unreadable ({e}): counted again from the event log", file=sys.stderr)
        return Totals(), logs.Position()


def _save(path: str, totals: Totals, at: logs.Position) -> None:
    partial = f"{path}.{os.getpid()}.part"
    try:
        with open(partial, "w", encoding="utf-8") as f:
            json.dump({"totals": totals.to_json(), "position": at.to_json()}, f)
        os.replace(partial, path)   # readers see the old state or the new one, never half of one
    except OSError as e:   # the metrics are still right for this reader; the next one folds more
        print(f"rewarm: cannot keep metric totals in {path}: {e}", file=sys.stderr)


class _Collector:
    """Hands prometheus_client the families of the totals `read` gives at each collection."""

    def __init__(self, read: Callable[[], Totals]):
        self.read = read

    def collect(self) -> Iterator[Metric]:
        return self.read().families()


def live_registry(read: Callable[[], Totals]) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Collector(read))
    return registry


def write(path: str, totals: Totals) -> None:
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    write_to_textfile(path, live_registry(lambda: totals))
    os.chmod(path, 0o644)   # the node exporter reads it as its own user
