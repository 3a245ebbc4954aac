"""Restore vs cold start of a CPU worker that imports torch and warms a model up, in one run.

Time to first answer of: a cold start through thaw-runc (no snapshot), restores through thaw-runc
with the snapshot in the page cache and after dropping the page cache. Also the snapshot size,
capture time and the restore's stages (from thaw's event log).
Needs torch for the container's python (/usr/bin/python3) in a directory given by --torch-site;
`--prepare` installs it there with pip.
Usage: .venv/bin/python benchmarks/restore_cpu.py [--prepare] [--torch-site DIR] [--restores N]
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess

import common
from runtime import capture, lab as lab_mod

TORCH_WHEEL_SPEC = "torch==2.13.0"
WORKER = os.path.join(os.path.dirname(lab_mod.WORKER_DIR), "torch-worker")


def prepare(site: str) -> None:
    if os.path.isdir(os.path.join(site, "torch")):
        return
    subprocess.run(["/usr/bin/python3", "-m", "pip", "install", "-q", "--target", site, TORCH_WHEEL_SPEC, "numpy"],
                   check=True)


def last_event(cfg: dict, kind: str) -> dict:
    with open(cfg["event_log"]) as f:
        return [json.loads(line) for line in f if f'"{kind}"' in line][-1]


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--torch-site", default="/var/tmp/thaw-bench/torch-site")
    p.add_argument("--prepare", action="store_true")
    p.add_argument("--restores", type=int, default=3)
    p.add_argument("--layers", default="6")
    a = p.parse_args()
    if a.prepare:
        prepare(a.torch_site)
    top, cfg = common.private_node()
    lab = lab_mod.Lab(os.path.join(top, "lab"))
    annotations = {"thaw.dev/snapshot": "torch-worker"}

    def worker():  # type: ignore[no-untyped-def]
        w = lab.worker(annotations, env={"PYTHONPATH": "/opt/torch", "LAYERS": a.layers}, app_dir=WORKER)
        w.binds["/opt/torch"] = a.torch_site
        return w

    try:
        cold = lab.create("cold", worker())
        cold_answer, cold_s = cold.wait_ready(timeout=600)
        from runtime import settings
        entry = capture.capture(settings.load(), lab.runc_root, cold.cid, "torch-worker", leave_running=True)
        capture_s = entry.manifest["capture"]["seconds"]
        warm_runs, stages = [], []
        for i in range(a.restores):
            c = lab.create(f"warm{i}", worker())
            answer, seconds = c.wait_ready()
            assert answer["boot_id"] == cold_answer["boot_id"] and answer["tokens"] == cold_answer["tokens"]
            warm_runs.append(seconds)
            stages.append(last_event(cfg, "restored")["stages"])
            c.destroy()
            lab.containers.remove(c)
        subprocess.run(["sync"], check=True)
        with open("/proc/sys/vm/drop_caches", "w") as f:
            f.write("3\n")
        c = lab.create("coldcache", worker())
        _, cold_cache_s = c.wait_ready()
        cold_cache_stages = last_event(cfg, "restored")["stages"]
    finally:
        lab.close()
        shutil.rmtree(top, ignore_errors=True)
    warm_s = statistics.median(warm_runs)
    size = entry.size()
    rows = [["cold start (no snapshot)", f"{cold_s:.2f}", "1.0x", ""],
            ["restore, snapshot in page cache", f"{warm_s:.2f}", f"{cold_s / warm_s:.1f}x",
             ", ".join(f"{k} {v:.2f}" for k, v in stages[len(stages) // 2].items())],
            ["restore, page cache dropped", f"{cold_cache_s:.2f}", f"{cold_s / cold_cache_s:.1f}x",
             ", ".join(f"{k} {v:.2f}" for k, v in cold_cache_stages.items())]]
    md = (f"CPU torch worker ({cold_answer['params'] / 1e6:.0f}M params, fp32), time to first answer; "
          f"snapshot {size / 2**20:.0f} MiB, captured in {capture_s:.2f}s\n\n"
          + common.table(["path", "seconds", "vs cold", "restore stages (s)"], rows))
    common.write("restore_cpu", {"machine": common.machine(), "cold_start_s": cold_s, "restore_warm_cache_s": warm_runs,
                                 "restore_cold_cache_s": cold_cache_s, "ratio_warm_cache": cold_s / warm_s,
                                 "ratio_cold_cache": cold_s / cold_cache_s, "snapshot_bytes": size,
                                 "capture_s": capture_s, "stages": stages, "cold_cache_stages": cold_cache_stages,
                                 "params": cold_answer["params"]}, md)


if __name__ == "__main__":
    main()
