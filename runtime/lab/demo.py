"""`rewarm demo`: the whole story through containerd's CRI API, the way kubelet drives a node.

A private containerd (own root, state and socket) gets the rewarm handler; a worker image is built
from this machine's files. Pod 1 cold-starts and is captured once ready; pod 2, same spec, is
restored. Prints the timings, then removes everything it made.
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
from typing import Callable, TypeVar

from runtime.observe import logs
from runtime.snapshot import store
from runtime.lab.containerd_lab import Lab, Pod
from runtime.lab.runc_lab import WORKER_DIR, rewarm_runc
from runtime.model.settings import Settings

IMAGE = "localhost/rewarm/demo-worker:1"
COMMAND = ["/usr/bin/python3", "/app/worker.py"]
T = TypeVar("T")


def _progress(label: str, done: threading.Event) -> None:
    """A ticking line on a terminal; nothing in a log (carriage returns would garble it)."""
    started = time.monotonic()
    while not done.wait(1.0):
        print(f"\r  {label} ... {time.monotonic() - started:4.0f}s", end="", file=sys.stderr, flush=True)
    print("\r\033[K", end="", file=sys.stderr, flush=True)


def _timed(label: str, fn: Callable[[], T]) -> T:
    if not sys.stderr.isatty():
        return fn()
    done = threading.Event()
    threading.Thread(target=_progress, args=(label, done), daemon=True).start()
    try:
        return fn()
    finally:
        done.set()


def run(cfg: Settings, warm_seconds: float = 10.0) -> int:
    top = tempfile.mkdtemp(prefix="rewarm-demo-")
    cfg = dataclasses.replace(cfg, store=os.path.join(top, "store"), event_log=os.path.join(top, "events.jsonl"),
                              metrics_file=os.path.join(top, "rewarm.prom"))
    config_path = os.path.join(top, "config.json")
    with open(config_path, "w") as f:
        json.dump(cfg.to_json(), f)
    lab = Lab("demo", rewarm_config=config_path)
    annotations = {"rewarm.dev/snapshot": "demo-worker", "rewarm.dev/capture": "on-ready"}
    env = {"WARM_SECONDS": str(warm_seconds), "PORT": "8080"}
    pods: list[Pod] = []
    try:
        print("0/3 set-up: a private containerd with the rewarm runtime handler, a worker image built locally")
        _timed("starting containerd, building images", lambda: (
            lab.setup(rewarm_runc()), lab.build_worker_image(IMAGE, WORKER_DIR, COMMAND)))
        print(f"1/3 pod 1 (runtimeClass rewarm, {', '.join(f'{k}: {v}' for k, v in annotations.items())}):")
        print(f"    no snapshot yet, so a cold start; the worker warms up for {warm_seconds:.0f}s")
        pods.append(lab.pod("worker-1", IMAGE, COMMAND, annotations=annotations, env=env))
        cold_answer, cold_seconds = _timed("waiting for pod 1 to answer", pods[0].wait_answer)
        print(f"    answered {cold_seconds:.2f}s after RunPodSandbox (boot id {cold_answer['boot_id'][:8]})")
        print("2/3 capture on ready: rewarm checkpoints pod 1 while it keeps serving")
        entry = _timed("waiting for the snapshot",
                       lambda: store.Store(cfg.store).wait_for("default", "demo-worker", timeout=120))
        size = entry.size()
        print(f"    snapshot default/{entry.name}: {size / 2**20:.1f} MiB, captured in "
              f"{entry.manifest.capture.seconds:.2f}s")
        print("3/3 pod 2, same spec: restored from the snapshot instead of started")
        pods.append(lab.pod("worker-2", IMAGE, COMMAND, annotations=annotations, env=env))
        answer, restore_seconds = _timed("waiting for pod 2 to answer", pods[1].wait_answer)
        same = answer["boot_id"] == cold_answer["boot_id"]
        print(f"    answered {restore_seconds:.2f}s after RunPodSandbox with pod 1's warm state: {same}")
        first_line = (pods[1].log().splitlines() or ["- - - (empty)"])[0].split(" ", 3)[-1]
        print(f"    pod 2's log begins: {first_line}")
        print("    the CRI calls: " + ", ".join(f"{k} {v:.2f}s" for k, v in pods[1].seconds.items())
              + " (containerd runs rewarm-runc create, the restore, in StartContainer)")
        restored = [e for e in logs.read_events(cfg.event_log) if e.get("event") == "restored"]
        if restored:
            stages = restored[-1].get("stages") or {}
            print("    the restore's stages: " + ", ".join(f"{k} {v:.3f}s" for k, v in stages.items()
                                                        if isinstance(v, (int, float)) and v >= 0.001))
        print()
        print("| pod | time to first answer (RunPodSandbox to HTTP 200) |")
        print("|---|---|")
        print(f"| 1: cold start | {cold_seconds:.2f} s |")
        print(f"| 2: restore | {restore_seconds:.2f} s |")
        print(f"| speed-up | {cold_seconds / restore_seconds:.1f}x |")
        print(f"| snapshot size | {size / 2**20:.1f} MiB |")
        return 0 if same else 1
    finally:
        for pod in pods:
            pod.delete()
        lab.destroy()
        shutil.rmtree(top, ignore_errors=True)
