"""Prometheus text-format metrics of rewarm's lifecycle events, for a node exporter's textfile
collector. Derived from the event log each time, so the numbers survive restarts and stay consistent
with it; written with one rename."""
from __future__ import annotations

from collections import defaultdict
from typing import Any

from runtime.adapters.files import atomic_write
from runtime.model.events import EventKind

REASONS = (("no snapshot", "missing"), ("does not fit", "incompatible"), ("checksum", "corrupt"),
           ("manifest", "corrupt"), ("size", "corrupt"), ("invalid", "invalid"), ("unknown annotation", "invalid"),
           ("restore failed", "failed"), ("hook", "failed"), ("longer than", "timeout"))


def reason_class(reason: str) -> str:
    return next((label for needle, label in REASONS if needle in reason), "other")


def _labels(**labels: str) -> str:
    inner = ",".join(f'{k}="{str(v).replace(chr(92), chr(92) * 2).replace(chr(34), chr(92) + chr(34))}"'
                     for k, v in sorted(labels.items()))
    return "{" + inner + "}"


def render(events: list[dict[str, Any]]) -> str:
    counters: dict[tuple[str, str], float] = defaultdict(float)
    for e in events:
        ns, snap = e.get("namespace", ""), e.get("snapshot", "")
        kind = e.get("event")
        if kind == EventKind.RESTORED.value:
            counters[("rewarm_restores_total", _labels(namespace=ns, snapshot=snap))] += 1
            counters[("rewarm_restore_seconds_sum", _labels(namespace=ns, snapshot=snap))] += e.get("seconds", 0)
            counters[("rewarm_restore_seconds_count", _labels(namespace=ns, snapshot=snap))] += 1
        elif kind in (EventKind.COLD_START.value, EventKind.RESTORE_REFUSED.value):
            name = "rewarm_cold_starts_total" if kind == EventKind.COLD_START.value else "rewarm_restores_refused_total"
            counters[(name, _labels(namespace=ns, snapshot=snap, reason=reason_class(e.get("reason", ""))))] += 1
        elif kind == EventKind.CAPTURED.value:
            counters[("rewarm_captures_total", _labels(namespace=ns, snapshot=snap))] += 1
            counters[("rewarm_capture_seconds_sum", _labels(namespace=ns, snapshot=snap))] += e.get("seconds", 0)
            counters[("rewarm_capture_bytes_sum", _labels(namespace=ns, snapshot=snap))] += e.get("bytes", 0)
        elif kind == EventKind.CAPTURE_FAILED.value:
            counters[("rewarm_capture_failures_total", _labels(namespace=ns, snapshot=snap))] += 1
        elif kind == EventKind.STOPPED.value:
            counters[("rewarm_containers_stopped_total", _labels(outcome=e.get("outcome", "unknown")))] += 1
    help_lines = {
        "rewarm_restores_total": "Containers restored from a snapshot.",
        "rewarm_restore_seconds_sum": "Seconds spent in restores (create to restored).",
        "rewarm_restore_seconds_count": "Restores timed.",
        "rewarm_cold_starts_total": "Annotated containers that cold-started, by reason.",
        "rewarm_restores_refused_total": "Restores refused with rewarm.dev/fallback: fail, by reason.",
        "rewarm_captures_total": "Snapshots captured.",
        "rewarm_capture_seconds_sum": "Seconds spent capturing.",
        "rewarm_capture_bytes_sum": "Bytes of snapshots captured.",
        "rewarm_capture_failures_total": "Captures that failed (the worker kept running).",
        "rewarm_containers_stopped_total": "Annotated containers stopped, by how they had started.",
    }
    lines = []
    for metric in sorted({m for m, _ in counters}):
        kind = "counter" if metric.endswith(("_total", "_sum", "_count")) else "gauge"
        lines += [f"# HELP {metric} {help_lines[metric]}", f"# TYPE {metric} {kind}"]
        lines += [f"{metric}{labels} {value:g}" for (m, labels), value in sorted(counters.items()) if m == metric]
    return "\n".join(lines) + "\n"


def write(path: str, events: list[dict[str, Any]]) -> None:
    atomic_write(path, render(events), mode=0o644, sync=False)
