"""GPU worker: cold start vs restore through rewarm-runc, restore stages, THP madvise vs always.

The worker (examples/gpu-worker) holds GPU_GIB of weights and a CUDA graph. One run: cold start,
capture, then restores with transparent huge pages as the node has them and with `always`, each
with the snapshot in the page cache, and one after dropping the page cache. Run on a GPU node with
the interpreter that has torch. Usage: python3 benchmarks/restore_gpu.py [--gib 10]
"""
from __future__ import annotations

import argparse
import os
import shutil
import subprocess

import common
from runtime.host import settings_file
from runtime.engine import capture
from runtime.gpu import nvml
from runtime.lab.runc_lab import Lab

WORKER = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "examples", "gpu-worker")


def restore_once(lab: Lab, cfg: dict, annotations: dict, env: dict, name: str) -> tuple[float, dict, dict]:
    c = lab.create(name, lab.gpu_worker(annotations, env, WORKER))
    answer, seconds = c.wait_ready(timeout=600)
    stages = [e for e in common_events(cfg) if e.get("container") == c.cid][-1].get("stages", {})
    c.destroy()
    lab.containers.remove(c)
    return seconds, stages, answer


def common_events(cfg: dict) -> list[dict]:
    import json
    with open(cfg["event_log"]) as f:
        return [json.loads(line) for line in f]


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--gib", default="10")
    a = p.parse_args()
    top, cfg = common.private_node()
    lab = Lab(os.path.join(top, "lab"))
    annotations, env = {"rewarm.dev/snapshot": "gpu-bench"}, {"GPU_GIB": a.gib}
    original_thp = common.thp()
    rows, data = [], {"machine": common.machine(), "gpu": [g.model for g in nvml.inventory().gpus][:1]}
    try:
        cold = lab.create("cold", lab.gpu_worker(annotations, env, WORKER))
        cold_answer, cold_s = cold.wait_ready(timeout=900)
        entry = capture.capture(settings_file.load(), lab.runc_root, cold.cid, "gpu-bench", leave_running=False)
        lab.containers.remove(cold)
        cold.bundle.remove()
        size = entry.size()
        data.update(cold_start_s=cold_s, snapshot_bytes=size, capture_s=entry.manifest.capture.seconds)
        rows.append(["cold start", original_thp, f"{cold_s:.2f}", "", "", "", ""])
        for label, mode, drop in (("restore", original_thp, False), ("restore", "always", False),
                                  ("restore, page cache dropped", "always", True)):
            common.thp(mode)
            if drop:
                subprocess.run(["sync"])
                with open("/proc/sys/vm/drop_caches", "w") as f:
                    f.write("3\n")
            seconds, stages, answer = restore_once(lab, cfg, annotations, env, f"r-{mode}-{int(drop)}")
            assert answer == cold_answer
            gbps = size / 1e9 / stages.get("runtime_restore", seconds)
            rows.append([label, mode, f"{seconds:.2f}", f"{stages.get('criu', 0):.2f}", f"{stages.get('cuda_restore', 0):.2f}",
                         f"{stages.get('verify', 0):.2f}", f"{gbps:.2f}"])
            data.setdefault("restores", []).append({"label": label, "thp": mode, "seconds": seconds, "stages": stages})
    finally:
        common.thp(original_thp)
        lab.close()
        shutil.rmtree(top, ignore_errors=True)
    md = (f"GPU worker on {data['gpu'][0]}: {a.gib} GiB of GPU weights + CUDA graph; snapshot {size / 1e9:.1f} GB, "
          f"captured in {data['capture_s']:.1f}s. Time to first answer through rewarm-runc.\n\n"
          + common.table(["path", "THP", "first answer (s)", "CRIU (s)", "CUDA restore+unlock (s)", "verify (s)",
                          "restore GB/s"], rows))
    common.write("restore_gpu", data, md)


if __name__ == "__main__":
    main()
