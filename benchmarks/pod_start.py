"""Pod-level cost of the rewarm handler for pods without rewarm annotations, against plain runc.

Through containerd's CRI, the way kubelet starts and deletes a pod: RunPodSandbox, CreateContainer,
StartContainer, first HTTP answer from the worker, then StopContainer, RemoveContainer,
StopPodSandbox, RemovePodSandbox. Handlers alternate so drift hits both alike.
Usage: .venv/bin/python benchmarks/pod_start.py [--pods N]
"""
from __future__ import annotations

import argparse
import statistics
import time

import common
from runtime.lab.containerd_lab import Lab
from runtime.lab.runc_lab import WORKER_DIR, rewarm_runc

IMAGE = "localhost/rewarm/bench-worker:1"
COMMAND = ["/usr/bin/python3", "/app/worker.py"]


def one_pod(lab: Lab, handler: str, i: int) -> tuple[float, float]:
    pod = lab.pod(f"bench-{handler}-{i}", IMAGE, COMMAND, handler=handler, env={"WARM_SECONDS": "0", "PORT": "8080"})
    _, start = pod.wait_answer(timeout=60)
    t = time.monotonic()
    pod.delete()
    return start, time.monotonic() - t


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--pods", type=int, default=10)
    a = p.parse_args()
    top, _ = common.private_node()
    lab = Lab("bench", rewarm_config=f"{top}/config.json").setup(rewarm_runc())
    try:
        lab.build_worker_image(IMAGE, WORKER_DIR, COMMAND)
        samples: dict[str, list[tuple[float, float]]] = {"runc": [], "rewarm": []}
        one_pod(lab, "runc", -1), one_pod(lab, "rewarm", -1)  # warm the page cache and containerd
        for i in range(a.pods):
            for handler in ("runc", "rewarm") if i % 2 else ("rewarm", "runc"):
                samples[handler].append(one_pod(lab, handler, i))
    finally:
        lab.destroy()
    med = {h: (statistics.median(s[0] for s in v), statistics.median(s[1] for s in v)) for h, v in samples.items()}
    rows = [[h, f"{med[h][0] * 1000:.0f}", f"{med[h][1] * 1000:.0f}",
             f"{med[h][0] / med['runc'][0]:.3f}", f"{(med[h][0] + med[h][1]) / sum(med['runc']):.3f}"]
            for h in ("runc", "rewarm")]
    markdown = common.table(["handler", "pod start to first answer (ms)", "pod stop + remove (ms)",
                             "start ratio", "start+delete ratio"], rows)
    common.write("pod_start", {"machine": common.machine(), "pods": a.pods, "samples": samples,
                               "median_s": med}, markdown)


if __name__ == "__main__":
    main()
