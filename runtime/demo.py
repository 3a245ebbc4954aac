"""`thaw demo`: one worker cold-started through thaw-runc, captured once warm, and a second one
restored from the snapshot, with timings. Everything it makes (store, bundles, network
namespaces) lives in a temporary directory and is removed at the end.
"""
from __future__ import annotations

import dataclasses
import json
import os
import shutil
import sys
import tempfile
import threading
import time

from runtime import capture
from runtime.lab import Lab
from runtime.settings import Settings


def _progress(label: str, done: threading.Event) -> None:
    started = time.monotonic()
    while not done.wait(1.0):
        print(f"\r  {label} ... {time.monotonic() - started:4.0f}s", end="", file=sys.stderr, flush=True)
    print("\r\033[K", end="", file=sys.stderr, flush=True)


def _timed(label: str, fn):  # type: ignore[no-untyped-def]
    done = threading.Event()
    threading.Thread(target=_progress, args=(label, done), daemon=True).start()
    try:
        return fn()
    finally:
        done.set()


def run(cfg: Settings, warm_seconds: float = 10.0) -> int:
    top = tempfile.mkdtemp(prefix="thaw-demo-")
    os.chmod(top, 0o755)
    cfg = dataclasses.replace(cfg, store=os.path.join(top, "store"), event_log=os.path.join(top, "events.jsonl"))
    config_path = os.path.join(top, "config.json")
    with open(config_path, "w") as f:
        json.dump(dataclasses.asdict(cfg), f)
    os.environ["THAW_CONFIG"] = config_path  # thaw-runc, started by the lab, reads the same config
    lab = Lab(os.path.join(top, "lab"))
    annotations = {"thaw.dev/snapshot": "demo-worker"}
    env = {"WARM_SECONDS": str(warm_seconds)}
    try:
        print(f"1/3 cold start: worker warms up for {warm_seconds:.0f}s before it answers")
        cold = lab.create("cold", lab.worker(annotations, env=env))
        cold_answer, cold_seconds = _timed("waiting for the cold worker", cold.wait_ready)
        print(f"    answered after {cold_seconds:.2f}s (boot id {cold_answer['boot_id'][:8]})")
        print("2/3 capture: checkpoint the warm worker into the snapshot store")
        entry = _timed("capturing", lambda: capture.capture(cfg, lab.runc_root, cold.cid, "demo-worker",
                                                             leave_running=True))
        size = entry.size()
        print(f"    snapshot {entry.name}: {size / 2**20:.1f} MiB in {entry.manifest['capture']['seconds']:.2f}s")
        print("3/3 restore: a second container with the same spec, new id, bundle and network namespace")
        restored = lab.create("restored", lab.worker(annotations, env=env))
        answer, restore_seconds = _timed("waiting for the restored worker", restored.wait_ready)
        same = answer["boot_id"] == cold_answer["boot_id"]
        print(f"    answered after {restore_seconds:.2f}s with the warm state of the first worker: {same}")
        print()
        print("| path | time to first answer |")
        print("|---|---|")
        print(f"| cold start | {cold_seconds:.2f} s |")
        print(f"| restore | {restore_seconds:.2f} s |")
        print(f"| speed-up | {cold_seconds / restore_seconds:.1f}x |")
        print(f"| snapshot size | {size / 2**20:.1f} MiB |")
        return 0 if same else 1
    finally:
        lab.close()
        shutil.rmtree(top, ignore_errors=True)
