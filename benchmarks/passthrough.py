"""Cost of rewarm-runc for containers without rewarm annotations, against plain runc, in one run.

A full create/start/state/kill/delete cycle, alternating runtimes so drift hits both alike, and
the cost of one pass-through verb (`state` of a running container).
Usage: .venv/bin/python benchmarks/passthrough.py [--cycles N] [--verbs N]
"""
from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import time

import common
from runtime.lab import bundles
from runtime.lab.runc_lab import Lab, rewarm_runc


def cycle(lab: Lab, runtime: str, i: int) -> float:
    t = time.perf_counter()
    c = lab.create(f"pt{i}", bundles.Worker(args=["/bin/sleep", "60"]), runtime=runtime, start=True)
    c.runtime_cmd("state", c.cid, check=True)
    c.runtime_cmd("kill", c.cid, "KILL", check=True)
    while c.state().get("status") != "stopped":
        time.sleep(0.005)
    c.runtime_cmd("delete", c.cid, check=True)
    elapsed = time.perf_counter() - t
    lab.containers.remove(c)
    c.bundle.remove()
    bundles.remove_netns(c.netns)
    return elapsed


def verb_ms(runtime: str, root: str, cid: str, n: int) -> float:
    samples = []
    for _ in range(n):
        t = time.perf_counter()
        subprocess.run([runtime, "--root", root, "state", cid], capture_output=True, check=True)
        samples.append((time.perf_counter() - t) * 1000)
    return statistics.median(samples)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--cycles", type=int, default=20)
    p.add_argument("--verbs", type=int, default=100)
    a = p.parse_args()
    top, _ = common.private_node()
    lab = Lab(top + "/lab")
    shim = rewarm_runc()
    times: dict[str, list[float]] = {"runc": [], "rewarm-runc": []}
    try:
        for i in range(a.cycles):
            for name, runtime in (("runc", "runc"), ("rewarm-runc", shim)):
                times[name].append(cycle(lab, runtime, f"{name}-{i}"))
        keeper = lab.create("verb", bundles.Worker(args=["/bin/sleep", "600"]), runtime="runc")
        verb = {"runc": verb_ms("runc", lab.runc_root, keeper.cid, a.verbs),
                "rewarm-runc": verb_ms(shim, lab.runc_root, keeper.cid, a.verbs)}
    finally:
        lab.close()
        shutil.rmtree(top, ignore_errors=True)
    med = {k: statistics.median(v) for k, v in times.items()}
    ratio = med["rewarm-runc"] / med["runc"]
    rows = [["runc", f"{med['runc'] * 1000:.1f}", f"{verb['runc']:.1f}", "1.00"],
            ["rewarm-runc", f"{med['rewarm-runc'] * 1000:.1f}", f"{verb['rewarm-runc']:.1f}", f"{ratio:.2f}"]]
    md = (f"Pass-through cost, {a.cycles} cycles each (median), {a.verbs} `state` calls each (median)\n\n"
          + common.table(["runtime", "create+start+state+kill+delete (ms)", "one verb: state (ms)", "cycle ratio"], rows)
          + f"\n\nrewarm-runc adds {verb['rewarm-runc'] - verb['runc']:.1f} ms per verb.")
    common.write("passthrough", {"machine": common.machine(), "cycles_s": times, "median_cycle_s": med,
                                 "cycle_ratio": ratio, "verb_ms": verb}, md)


if __name__ == "__main__":
    main()
