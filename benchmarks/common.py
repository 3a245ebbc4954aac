"""Shared bits of the benchmark scripts: a private thaw config, tables, result files."""
from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")


def private_node() -> tuple[str, dict]:
    """A temp dir with its own thaw config (store, event log), exported through THAW_CONFIG."""
    top = tempfile.mkdtemp(prefix="thaw-bench-")
    os.chmod(top, 0o755)
    cfg = {"store": os.path.join(top, "store"), "event_log": os.path.join(top, "events.jsonl"),
           "metrics_file": os.path.join(top, "thaw.prom"),
           **json.loads(os.environ.get("THAW_BENCH_CONFIG", "{}"))}  # e.g. runtime and CRIU paths of a GPU host
    with open(os.path.join(top, "config.json"), "w") as f:
        json.dump(cfg, f)
    os.environ["THAW_CONFIG"] = os.path.join(top, "config.json")
    return top, cfg


def machine() -> dict:
    def first(cmd: list[str]) -> str:
        try:
            return subprocess.run(cmd, capture_output=True, text=True).stdout.strip().splitlines()[0]
        except (OSError, IndexError):
            return "?"
    cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "?")
    return {"date": time.strftime("%Y-%m-%d"), "kernel": platform.release(), "cpu": cpu, "cores": os.cpu_count(),
            "runc": first(["runc", "--version"]), "criu": first(["criu", "--version"]),
            "python": platform.python_version()}


def table(headers: list[str], rows: list[list]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    return "\n".join(lines)


def write(name: str, data: dict, markdown: str) -> None:
    os.makedirs(RESULTS, exist_ok=True)
    with open(os.path.join(RESULTS, f"{name}.json"), "w") as f:
        json.dump(data, f, indent=2)
    with open(os.path.join(RESULTS, f"{name}.md"), "w") as f:
        f.write(markdown + "\n")
    print(markdown)
