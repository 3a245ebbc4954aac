"""Prometheus text-format metrics of thaw's lifecycle events, for a node exporter's textfile
collector. Derived from the event log each time, so the numbers survive restarts and stay consistent
with it; written with one rename."""
from __future__ import annotations

import os
import tempfile
from collections import defaultdict
from typing import Any

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
        if kind == "restored":
            counters[("thaw_restores_total", _labels(namespace=ns, snapshot=snap))] += 1
            counters[("thaw_restore_seconds_sum", _labels(namespace=ns, snapshot=snap))] += e.get("seconds", 0)
            counters[("thaw_restore_seconds_count", _labels(namespace=ns, snapshot=snap))] += 1
        elif kind in ("cold-start", "restore-refused"):
            name = "thaw_cold_starts_total" if kind == "cold-start" else "thaw_restores_refused_total"
            counters[(name, _labels(namespace=ns, snapshot=snap, reason=reason_class(e.get("reason", ""))))] += 1
        elif kind == "captured":
            counters[("thaw_captures_total", _labels(namespace=ns, snapshot=snap))] += 1
            counters[("thaw_capture_seconds_sum", _labels(namespace=ns, snapshot=snap))] += e.get("seconds", 0)
            counters[("thaw_capture_bytes_sum", _labels(namespace=ns, snapshot=snap))] += e.get("bytes", 0)
        elif kind == "capture-failed":
            counters[("thaw_capture_failures_total", _labels(namespace=ns, snapshot=snap))] += 1
        elif kind == "stopped":
            counters[("thaw_containers_stopped_total", _labels(outcome=e.get("outcome", "unknown")))] += 1
    help_lines = {
        "thaw_restores_total": "Containers restored from a snapshot.",
        "thaw_restore_seconds_sum": "Seconds spent in restores (create to restored).",
        "thaw_restore_seconds_count": "Restores timed.",
        "thaw_cold_starts_total": "Annotated containers that cold-started, by reason.",
        "thaw_restores_refused_total": "Restores refused with thaw.dev/fallback: fail, by reason.",
        "thaw_captures_total": "Snapshots captured.",
        "thaw_capture_seconds_sum": "Seconds spent capturing.",
        "thaw_capture_bytes_sum": "Bytes of snapshots captured.",
        "thaw_capture_failures_total": "Captures that failed (the worker kept running).",
        "thaw_containers_stopped_total": "Annotated containers stopped, by how they had started.",
    }
    lines = []
    for metric in sorted({m for m, _ in counters}):
        kind = "counter" if metric.endswith(("_total", "_sum", "_count")) else "gauge"
        lines += [f"# HELP {metric} {help_lines[metric]}", f"# TYPE {metric} {kind}"]
        lines += [f"{metric}{labels} {value:g}" for (m, labels), value in sorted(counters.items()) if m == metric]
    return "\n".join(lines) + "\n"


def write(path: str, events: list[dict[str, Any]]) -> None:
    directory = os.path.dirname(path) or "."
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=".thaw-metrics-")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(render(events))
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise
