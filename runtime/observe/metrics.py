"""Prometheus metrics of rewarm's lifecycle events: for a node exporter's textfile collector
(rewritten by `rewarm-hook poststop`) and `rewarm agent`'s /metrics. Both serve `served()`.

Every event metric is a running count, sum or histogram over the event log. The totals are kept in
a state file beside the log (EVENT_LOG.totals.json, with the log position they reach): each reader
folds in only the lines appended since, so a scrape or a container's stop costs what is new, not
the whole log, and the counters keep counting when the log rotates. Histograms keep their bucket
counts there too: the textfile and /metrics serve the same buckets, and every bucket only grows.
Cold starts and failures are counted by the reason code the engine recorded (events.ReasonCode),
never by their text. The store's gauges are read at each collection from the entries' manifests
(no walk of the snapshots' files). prometheus_client writes the text format (escaping included)
and the file with one rename."""
from __future__ import annotations

import bisect
import fcntl
import functools
import itertools
import json
import math
import os
import re
import sys
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Iterator, Mapping

from prometheus_client import CollectorRegistry, write_to_textfile
from prometheus_client.core import (CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, InfoMetricFamily,
                                    Metric, SummaryMetricFamily)

from runtime.observe import logs
from runtime.model import layout
from runtime.model.events import EventKind, reason_code

Labels = tuple[str, ...]
SNAPSHOT: Labels = ("namespace", "snapshot")
BY_CODE: Labels = (*SNAPSHOT, "code")
BY_STAGE: Labels = ("stage",)   # node-wide: stages x snapshots x buckets would be thousands of series

COUNTERS: dict[str, tuple[str, Labels]] = {
    "restores": ("Containers restored from a snapshot.", SNAPSHOT),
    "cold_starts": ("Annotated containers that started cold, by reason code.", BY_CODE),
    "restores_refused": ("Restores refused with rewarm.dev/fallback: fail (not started), by reason code.", BY_CODE),
    "restore_failures": ("Cold starts and refusals because something broke (not because no snapshot fitted), "
                         "by reason code.", BY_CODE),
    "captures": ("Snapshots captured.", SNAPSHOT),
    "capture_failures": ("Captures that failed (the worker kept running), by reason code.", BY_CODE),
    "pulls": ("Snapshots pulled from a registry into the store.", SNAPSHOT),
    "pull_bytes": ("Bytes fetched by pulls that completed.", SNAPSHOT),
    "pull_failures": ("Pulls that failed or were refused, by reason code.", BY_CODE),
    "pushes": ("Snapshots pushed to a registry.", SNAPSHOT),
    "push_bytes": ("Bytes sent by pushes that completed.", SNAPSHOT),
    "push_skipped_bytes": ("Bytes a push did not send: the registry had those blobs already.", SNAPSHOT),
    "push_failures": ("Pushes that failed, by reason code.", BY_CODE),
    "containers_stopped": ("Annotated containers stopped, by how they had started.", ("outcome",)),
}
SUMMARIES: dict[str, tuple[str, Labels]] = {
    "capture_bytes": ("Bytes of snapshots captured.", SNAPSHOT),
}
HISTOGRAMS: dict[str, tuple[str, Labels]] = {
    "restore_seconds": ("Seconds from a restoring create to the restored container.", SNAPSHOT),
    "restore_stage_seconds": ("Seconds of each stage of the restores (find, verify, rootfs, criu, cuda_restore, "
                              "resume, ...).", BY_STAGE),
    "capture_seconds": ("Seconds a capture took.", SNAPSHOT),
    "capture_stage_seconds": ("Seconds of each step of the captures (checkpoint, commit, ...).", BY_STAGE),
    "pull_seconds": ("Seconds a completed pull took.", SNAPSHOT),
    "push_seconds": ("Seconds a completed push took.", SNAPSHOT),
}
# Upper bounds in seconds (+Inf follows): a warm GPU restore takes 0.5-3 s, one from a cold page cache
# or a capture tens of seconds, a pull of tens of GB minutes. Fixed: the state file's counts are
# these buckets' (another set of bounds there is counted afresh).
BUCKETS = (0.1, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0, 15.0, 30.0, 60.0, 120.0, 300.0, 600.0)
# A stage label is one of the pipelines' own names; the per-call keys of a resume sequence
# ("resume /wake_up?tags=...", from a pod's annotation) are parts of `resume` and left out.
STAGE_NAME = re.compile(r"[a-z][a-z0-9_]{0,39}")
STATE = ".totals.json"       # EVENT_LOG.totals.json: the totals and the log position they reach
STATE_LOCK = ".totals.lock"  # one fold at a time: poststop hooks and scrapes fold at once
FORMAT = 2                   # of the state file: 1 had no histograms and no codes (counted afresh)


@dataclass
class Observed:
    """One histogram series: how many observations fell in each bucket (not cumulative; the last
    is +Inf's) and their sum."""
    counts: list[float] = field(default_factory=lambda: [0.0] * (len(BUCKETS) + 1))
    total: float = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(BUCKETS, value)] += 1   # le is inclusive: 1.0 falls in le="1.0"
        self.total += value

    def cumulative(self) -> list[tuple[str, float]]:
        """(le, observations at or below it), as the exposition's _bucket samples carry them."""
        les = [str(bound) for bound in BUCKETS] + ["+Inf"]
        return list(zip(les, itertools.accumulate(self.counts)))


def _number(value: Any) -> float | None:
    """A duration or size from an event: a non-negative number, or None (absent, or not one)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < math.inf:
        return None
    return float(value)


class Totals:
    """The counts, (count, sum) pairs and histograms of every metric, by label values, over the
    events added so far."""

    def __init__(self) -> None:
        self.counts: dict[str, dict[Labels, float]] = {}
        self.sums: dict[str, dict[Labels, tuple[float, float]]] = {}
        self.histograms: dict[str, dict[Labels, Observed]] = {}

    def add(self, e: Mapping[str, Any]) -> None:
        fold_in = _BY_KIND.get(str(e.get("event")))
        if fold_in is not None:
            fold_in(self, e, (str(e.get("namespace", "")), str(e.get("snapshot", ""))))

    def count(self, name: str, labels: Labels, by: float = 1.0) -> None:
        series = self.counts.setdefault(name, {})
        series[labels] = series.get(labels, 0.0) + by

    def add_sum(self, name: str, labels: Labels, value: Any) -> None:
        series = self.sums.setdefault(name, {})
        count, total = series.get(labels, (0.0, 0.0))
        series[labels] = (count + 1, total + (_number(value) or 0.0))

    def observe(self, name: str, labels: Labels, value: Any) -> None:
        seconds = _number(value)
        if seconds is not None:   # an event without its duration adds no observation
            self.histograms.setdefault(name, {}).setdefault(labels, Observed()).observe(seconds)

    def observe_stages(self, name: str, stages: Any) -> None:
        for stage, seconds in (stages.items() if isinstance(stages, dict) else ()):
            if isinstance(stage, str) and STAGE_NAME.fullmatch(stage):
                self.observe(name, (stage,), seconds)

    def families(self) -> Iterator[Metric]:
        for name, (doc, labels) in COUNTERS.items():
            if self.counts.get(name):
                counter = CounterMetricFamily(f"rewarm_{name}", doc, labels=labels)
                for values, n in sorted(self.counts[name].items()):
                    counter.add_metric(values, n)
                yield counter
        for name, (doc, labels) in SUMMARIES.items():
            if self.sums.get(name):
                summary = SummaryMetricFamily(f"rewarm_{name}", doc, labels=labels)
                for values, (count, total) in sorted(self.sums[name].items()):
                    summary.add_metric(values, count_value=int(count), sum_value=total)
                yield summary
        for name, (doc, labels) in HISTOGRAMS.items():
            if self.histograms.get(name):
                histogram = HistogramMetricFamily(f"rewarm_{name}", doc, labels=labels)
                for values, observed in sorted(self.histograms[name].items()):
                    histogram.add_metric(values, observed.cumulative(), sum_value=observed.total)
                yield histogram

    def to_json(self) -> dict[str, Any]:
        return {"format": FORMAT,
                "counts": {name: [[*labels, n] for labels, n in by.items()] for name, by in self.counts.items()},
                "sums": {name: [[*labels, c, s] for labels, (c, s) in by.items()] for name, by in self.sums.items()},
                "histograms": {name: {"buckets": list(BUCKETS),
                                      "rows": [[*labels, o.counts, o.total] for labels, o in by.items()]}
                               for name, by in self.histograms.items()}}

    @classmethod
    def from_json(cls, raw: Any) -> "Totals":
        """Raises ValueError for what to_json did not write, in an older format or with other buckets."""
        totals = cls()
        try:
            if raw["format"] != FORMAT:
                raise ValueError(f"format {raw['format']!r}, not {FORMAT}")
            for name, rows in raw["counts"].items():
                totals.counts[name] = {tuple(map(str, row[:-1])): float(row[-1]) for row in rows}
            for name, rows in raw["sums"].items():
                totals.sums[name] = {tuple(map(str, row[:-2])): (float(row[-2]), float(row[-1])) for row in rows}
            for name, histogram in raw["histograms"].items():
                if [float(b) for b in histogram["buckets"]] != list(BUCKETS):
                    raise ValueError(f"{name} has other buckets")
                totals.histograms[name] = {tuple(map(str, row[:-2])): _observed(row[-2], row[-1])
                                           for row in histogram["rows"]}
        except (KeyError, TypeError, AttributeError, IndexError) as e:
            raise ValueError(f"not metric totals: {e}") from e
        return totals


def _observed(counts: Any, total: Any) -> Observed:
    if len(counts) != len(BUCKETS) + 1:
        raise ValueError("a histogram row of other buckets")
    return Observed([float(n) for n in counts], float(total))


# What each kind of event adds: (totals, the event, its (namespace, snapshot)).
FoldIn = Callable[[Totals, Mapping[str, Any], Labels], None]


def _restored(t: Totals, e: Mapping[str, Any], snap: Labels) -> None:
    t.count("restores", snap)
    t.observe("restore_seconds", snap, e.get("seconds"))
    t.observe_stages("restore_stage_seconds", e.get("stages"))


def _not_restored(counter: str) -> FoldIn:
    def fold_in(t: Totals, e: Mapping[str, Any], snap: Labels) -> None:
        code = reason_code(e.get("code"))   # an event from before codes: "unknown"
        t.count(counter, (*snap, code.value))
        if code.is_failure:
            t.count("restore_failures", (*snap, code.value))
    return fold_in


def _captured(t: Totals, e: Mapping[str, Any], snap: Labels) -> None:
    t.count("captures", snap)
    t.observe("capture_seconds", snap, e.get("seconds"))
    t.add_sum("capture_bytes", snap, e.get("bytes"))
    t.observe_stages("capture_stage_seconds", e.get("stages"))


def _pulled(t: Totals, e: Mapping[str, Any], snap: Labels) -> None:
    t.count("pulls", snap)
    t.count("pull_bytes", snap, _number(e.get("bytes")) or 0.0)
    t.observe("pull_seconds", snap, e.get("seconds"))


def _pushed(t: Totals, e: Mapping[str, Any], snap: Labels) -> None:
    t.count("pushes", snap)
    t.count("push_bytes", snap, _number(e.get("bytes")) or 0.0)
    t.count("push_skipped_bytes", snap, _number(e.get("skipped_bytes")) or 0.0)
    t.observe("push_seconds", snap, e.get("seconds"))


def _failed(counter: str) -> FoldIn:
    def fold_in(t: Totals, e: Mapping[str, Any], snap: Labels) -> None:
        t.count(counter, (*snap, reason_code(e.get("code")).value))
    return fold_in


def _stopped(t: Totals, e: Mapping[str, Any], snap: Labels) -> None:
    t.count("containers_stopped", (str(e.get("outcome", "unknown")),))


_BY_KIND: dict[str, FoldIn] = {
    EventKind.RESTORED.value: _restored,
    EventKind.COLD_START.value: _not_restored("cold_starts"),
    EventKind.RESTORE_REFUSED.value: _not_restored("restores_refused"),
    EventKind.CAPTURED.value: _captured,
    EventKind.CAPTURE_FAILED.value: _failed("capture_failures"),
    EventKind.PULLED.value: _pulled,
    EventKind.PULL_FAILED.value: _failed("pull_failures"),
    EventKind.PUSHED.value: _pushed,
    EventKind.PUSH_FAILED.value: _failed("push_failures"),
    EventKind.STOPPED.value: _stopped,
}


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
    missing, unreadable or of another format."""
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


# --- read at each collection: the store's use and the build ---------------------------------------
@dataclass(frozen=True)
class StoreUsage:
    entries: int       # committed entries with a readable manifest
    used_bytes: int    # the sizes their manifests list
    free_bytes: int    # what the store's filesystem has free (for an unprivileged writer, as pulls count it)
    size_bytes: int    # the size of that filesystem


def store_usage(root: str) -> StoreUsage | None:
    """None where the store is not there (yet). Reads each entry's manifest.json, never its files:
    entries are never modified once committed, so the sizes listed are the sizes there."""
    try:
        fs = os.statvfs(root)
    except OSError:
        return None
    entries, used = 0, 0
    for path in _entry_dirs(os.path.join(root, "snapshots")):
        size = _entry_bytes(path)
        if size is not None:
            entries, used = entries + 1, used + size
    return StoreUsage(entries, used, fs.f_bavail * fs.f_frsize, fs.f_blocks * fs.f_frsize)


def _entry_dirs(snapshots: str) -> Iterator[str]:
    """snapshots/NS/NAME/ENTRY (store.py's layout)."""
    for namespace in _subdirs(snapshots):
        for name in _subdirs(namespace):
            yield from _subdirs(name)


def _subdirs(path: str) -> list[str]:
    try:
        with os.scandir(path) as it:
            return [d.path for d in it if d.is_dir(follow_symlinks=False)]
    except OSError:   # gone meanwhile (gc, rm), or unreadable: nothing there to count
        return []


def _entry_bytes(path: str) -> int | None:
    from runtime.model.manifest import Manifest   # ~15 ms of imports: only a store with entries pays them
    try:
        with open(os.path.join(path, layout.MANIFEST), "rb") as f:
            raw = json.load(f)
        # No schema pass (jsonschema costs ~80 ms; restores check it): a gauge only needs the sizes.
        return Manifest.from_json(raw, schema_checked=True).size()
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None   # broken or half-removed: `rewarm ls` and gc deal with it


def store_families(root: str) -> Iterator[Metric]:
    usage = store_usage(root) if root else None
    if usage is None:
        return
    for name, doc, value in (
            ("store_entries", "Snapshot entries in the store.", usage.entries),
            ("store_used_bytes", "Bytes of the store's snapshot entries (as their manifests list them).",
             usage.used_bytes),
            ("store_free_bytes", "Bytes free on the store's filesystem.", usage.free_bytes),
            ("store_size_bytes", "Size in bytes of the store's filesystem.", usage.size_bytes)):
        yield GaugeMetricFamily(f"rewarm_{name}", doc, value=value)


@functools.cache
def version() -> str:
    from importlib.metadata import PackageNotFoundError, version as installed
    try:
        return installed("rewarm")
    except PackageNotFoundError:
        return "unknown"


def build_info() -> Metric:
    return InfoMetricFamily("rewarm_build", "The rewarm that serves these metrics.", value={"version": version()})


def served(event_log: str, store_root: str = "") -> list[Metric]:
    """Everything rewarm serves, the same in the textfile and on the agent's /metrics: the event
    log's running totals, the build, and (with a store) the store's use."""
    return [*fold(event_log).families(), build_info(), *store_families(store_root)]


class _Collector:
    """Hands prometheus_client the families `read` gives at each collection."""

    def __init__(self, read: Callable[[], Iterable[Metric]]):
        self.read = read

    def collect(self) -> Iterable[Metric]:
        return self.read()


def live_registry(read: Callable[[], Iterable[Metric]]) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Collector(read))
    return registry


def write(path: str, families: Iterable[Metric]) -> None:
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    kept = list(families)
    write_to_textfile(path, live_registry(lambda: kept))
    os.chmod(path, 0o644)   # the node exporter reads it as its own user
