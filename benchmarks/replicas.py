"""Replicas: N pods of the CPU warm-worker created at once on one node, all restoring from one
snapshot, beside one restore alone, a second node that has never seen the snapshot (pull on miss
from a real registry, then restore) and a cold start, all in one run through containerd's CRI.

Node A and node B are two private containerds (runtime/lab/containerd_lab.py), each with its own
rewarm config and store and the same fingerprint key (nodes that share snapshots share it); the
registry is Debian's docker-registry on loopback (runtime/lab/registry_lab.py), run by a dockerd
of this benchmark's own. Node A captures the worker on ready and pushes it; then, per round (the
order rotates so drift hits all alike): 1, 2 and 4 restores at once on A, the same with the memory
they will fill touched just before (`pretouched`: a VM that gives freed memory back to its host
pays the host's page faults on first touch, a bare-metal node does not), one pod on B with B's
store emptied first (pull on miss, then restore), one cold start on A. Each waits for a quiet
machine first; the page cache is warm for all (a warm-up round first). Per pod: RunPodSandbox to
the first HTTP 200, the CRI calls, the restore's stages from the event log's `restored` event;
per scenario: the machine's busy CPU seconds from the first RunPodSandbox to the last answer.
Usage: .venv/bin/python benchmarks/replicas.py [--repeats 5] [--ballast-mb 256]
"""
from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import statistics
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import common
from registry import free_port
from runtime.host import settings_file
from runtime.observe import logs
from runtime.snapshot import store
from runtime.lab.containerd_lab import Lab
from runtime.lab.registry_lab import Engine, Registry
from runtime.lab.runc_lab import WORKER_DIR, rewarm_runc

IMAGE = "localhost/rewarm/bench-worker:replicas"
COMMAND = ["/usr/bin/python3", "/app/worker.py"]
Row = dict[str, Any]
COUNTS = (1, 2, 4)
PULL, COLD = "pull on miss (node B)", "cold start"
SCENARIOS = ([f"restore x{n}" for n in COUNTS] + [f"restore x{n}, pretouched" for n in COUNTS] + [PULL, COLD])
STAGES = ("find", "fingerprint", "verify", "rootfs", "network", "runtime_restore")   # restore.STEPS, CPU only
COLUMNS = ["RunPodSandbox", "CreateContainer", "StartContainer", "answer after start", "outside the engine",
           *STAGES, "engine, other", "pull", "pull MB"]


def busy_seconds() -> float:
    """CPU seconds the machine has spent busy (all cores), from /proc/stat."""
    ticks = [int(v) for v in open("/proc/stat").readline().split()[1:]]
    return (sum(ticks) - ticks[3] - ticks[4]) / os.sysconf("SC_CLK_TCK")


QUIET = 0.25   # cores busy with other work (this machine is shared) that a measurement tolerates


def busy_rate(span: float) -> float:
    before = busy_seconds()
    time.sleep(span)
    return round((busy_seconds() - before) / span, 2)


def quiet(limit: float = 180.0, span: float = 3.0) -> float:
    """Wait (up to `limit` s) for under QUIET cores busy over `span` seconds (other work on the
    machine; and, on this VM, memory freed that long ago is back with the host); that rate, in cores."""
    deadline = time.monotonic() + limit
    while (rate := busy_rate(span)) >= QUIET and time.monotonic() < deadline:
        pass
    return rate


def reap(pid: int) -> None:
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, 0)


def start_together(lab: Lab, n: int, prefix: str, env: dict[str, str], notes: dict[str, str]) -> tuple[list[Row], Row]:
    """n pods whose RunPodSandbox calls start at once; each one's seconds to its first answer, and
    the machine's busy CPU seconds over the whole window."""
    barrier, pods = threading.Barrier(n), []

    def one(i: int) -> Row:
        barrier.wait()
        pod = lab.pod(f"{prefix}-{i}", IMAGE, COMMAND, env=env, annotations=notes)
        pods.append(pod)
        answer, seconds = pod.wait_answer(timeout=180)
        return {"first_answer_s": round(seconds, 3), "cri_s": {k: round(v, 3) for k, v in pod.seconds.items()},
                "container": pod.container_id, "boot_id": answer["boot_id"]}
    try:
        cpu, t = busy_seconds(), time.monotonic()
        with ThreadPoolExecutor(n) as pool:
            samples = list(pool.map(one, range(n)))
        return samples, {"window_s": round(time.monotonic() - t, 3), "busy_core_s": round(busy_seconds() - cpu, 2)}
    finally:
        for pod in pods:
            pod.delete()


def with_events(samples: list[Row], event_log: str, captured_boot: str) -> list[Row]:
    """Each pod's restore (stages, seconds in the engine), pull and cold-start reason, from the event log."""
    by_container: dict[str, dict[str, Row]] = {}
    for e in logs.read_events(event_log):
        by_container.setdefault(e.get("container", ""), {})[e["event"]] = e
    for s in samples:
        ev = by_container.get(s["container"], {})
        s["restored"] = "restored" in ev and s["boot_id"] == captured_boot
        if "restored" in ev:
            s["engine_s"], s["stages"] = ev["restored"]["seconds"], ev["restored"]["stages"]
        if "pulled" in ev:
            s["pull_s"], s["pull_bytes"] = ev["pulled"]["seconds"], ev["pulled"]["bytes"]
        if "cold-start" in ev:
            s["cold_reason"] = ev["cold-start"]["reason"]
    return samples


def run(repeats: int, ballast_mb: int, work: str) -> Row:
    engine = Engine(base=os.path.join(work, "docker"), run=os.path.join("/run/rewarm-lab", os.path.basename(work)))
    registry = Registry(os.path.join(work, "registry"), free_port(), tls=False, auth=False, engine=engine)
    labs: list[Lab] = []
    tops: list[str] = []
    env = {"WARM_SECONDS": "2", "PORT": "8080", "BALLAST_MB": str(ballast_mb)}
    try:
        registry.start()
        ref = f"{registry.address}/bench/worker:v1"
        tops.append(common.private_node(plain_http_registries=[registry.address],
                                        allowed_registries=[registry.address])[0])
        tops.append(common.private_node()[0])   # made from A's config: its registry settings and fingerprint key
        nodes = [settings_file.load(os.path.join(t, "config.json")) for t in tops]
        for name, top in zip(("replicas-a", "replicas-b"), tops):
            labs.append(Lab(name, rewarm_config=os.path.join(top, "config.json")))
            labs[-1].setup(rewarm_runc())
        (a, b), (node_a, node_b) = labs, nodes
        digests = {lab.build_worker_image(IMAGE, WORKER_DIR, []) for lab in labs}
        assert len(digests) == 1, f"the two nodes' images differ: {digests}"

        source = a.pod("source", IMAGE, COMMAND, env=env, annotations={
            "rewarm.dev/snapshot": "worker", "rewarm.dev/snapshot-ref": ref,
            "rewarm.dev/capture": "on-ready", "rewarm.dev/push": "on-capture"})
        captured_boot = source.wait_answer()[0]["boot_id"]
        deadline = time.monotonic() + 300
        while not (done := [e for e in logs.read_events(node_a.event_log)
                            if e["event"] in ("pushed", "push-failed", "capture-failed", "capture-skipped")]):
            assert time.monotonic() < deadline, f"no push: {logs.read_events(node_a.event_log)}"
            time.sleep(0.2)
        assert done[0]["event"] == "pushed", done[0]
        source.delete()
        captured = next(e for e in logs.read_events(node_a.event_log) if e["event"] == "captured")
        snapshot_bytes = store.Store(node_a.store).entries("default", "worker")[0].size()

        def scenario(what: str, label: str) -> Row:
            """Measured again (3 tries) where other work had begun by the end of its window."""
            for attempt in range(1, 4):
                background = quiet()
                out = measure(what, f"{label}-{attempt}")
                out.update(background_cores=background, after_cores=busy_rate(1), attempt=attempt)
                if out["after_cores"] < QUIET:
                    break
            return out

        def measure(what: str, label: str) -> Row:
            if what == PULL:
                store.Store(node_b.store).remove("default", "worker")
                os.sync()
                lab, node, n, notes = b, node_b, 1, {"rewarm.dev/snapshot": "worker", "rewarm.dev/snapshot-ref": ref}
            elif what == COLD:
                lab, node, n, notes = a, node_a, 1, {}
            else:
                lab, node, n, notes = a, node_a, int(what.split()[1].strip("x,")), {"rewarm.dev/snapshot": "worker"}
                if "pretouched" in what:   # what the pods will fill, and as much again for the rest
                    common.pretouch(2 * n * snapshot_bytes / (1 << 30))
            samples, machine = start_together(lab, n, label, env, notes)
            return {"pods": with_events(samples, node.event_log, captured_boot), **machine}

        for i, what in enumerate(SCENARIOS):   # warm-up: page cache, both containerds, the registry's blobs
            measure(what, f"warm-{i}")
        rounds: dict[str, list[Row]] = {w: [] for w in SCENARIOS}
        for r in range(repeats):
            for i, what in enumerate(SCENARIOS[r % len(SCENARIOS):] + SCENARIOS[:r % len(SCENARIOS)]):
                rounds[what].append(scenario(what, f"r{r}-{i}"))
                print(f"round {r + 1}/{repeats} {what}: "
                      + ", ".join(f"{p['first_answer_s']:.2f}s" for p in rounds[what][-1]["pods"])
                      + f" (busy {rounds[what][-1]['busy_core_s']} core-s)", flush=True)
        quiet()
        first_touch = [common.pretouch(1) for _ in range(2)]   # a GiB given back to the host, then again at once
        return {"machine": common.machine(), "repeats": repeats, "ballast_mb": ballast_mb,
                "restore_threads": node_a.restore_threads, "transfer_threads": node_b.transfer_threads,
                "thp": common.thp(), "snapshot_bytes": snapshot_bytes, "capture_s": captured["seconds"],
                "first_touch_gbps": round((1 << 30) / first_touch[0] / 1e9, 2),
                "touch_again_gbps": round((1 << 30) / first_touch[1] / 1e9, 2),
                "second_node": "a second private containerd with its own rewarm config and store",
                "rounds": rounds}
    finally:
        for lab in labs:
            lab.destroy()
        registry.stop()
        with contextlib.suppress(OSError, ValueError):   # dockerd is our child: reaped, stop() sees it gone
            with open(os.path.join(engine.exec_root, "dockerd.pid")) as f:
                threading.Thread(target=reap, args=(int(f.read()),), daemon=True).start()
        engine.stop()
        for path in [os.path.dirname(engine.exec_root), *tops]:
            shutil.rmtree(path, ignore_errors=True)


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def breakdown(pods: list[Row]) -> dict[str, float]:
    """Medians over pods: the CRI calls (containerd's CRI runs the runtime's create, which restores,
    in StartContainer), the restore's stages, what else the engine did, the pull."""
    out = {k: median([p["cri_s"][k] for p in pods]) for k in ("RunPodSandbox", "CreateContainer", "StartContainer")}
    out["answer after start"] = median([p["first_answer_s"] - sum(p["cri_s"].values()) for p in pods])
    restored = [p for p in pods if "stages" in p]
    if restored:
        out["outside the engine"] = median([p["cri_s"]["StartContainer"] - p["engine_s"] for p in restored])
        for k in STAGES:
            out[k] = median([p["stages"].get(k, 0.0) for p in restored])
        out["engine, other"] = median([p["engine_s"] - sum(p["stages"].values()) - p.get("pull_s", 0.0)
                                       for p in restored])
    pulled = [p for p in pods if "pull_s" in p]
    if pulled:
        out["pull"] = median([p["pull_s"] for p in pulled])
        out["pull MB"] = median([p["pull_bytes"] / 1e6 for p in pulled])
    return out


def report(result: Row) -> str:
    rounds = result["rounds"]
    pods = {w: [p for rnd in v for p in rnd["pods"]] for w, v in rounds.items()}
    first = {w: median([p["first_answer_s"] for p in ps]) for w, ps in pods.items()}
    rows, stage_rows, verdicts = [], [], []
    cores = result["machine"]["cores"]
    for what, v in rounds.items():
        slowest = [max(p["first_answer_s"] for p in rnd["pods"]) for rnd in v]
        busy = median([rnd["busy_core_s"] for rnd in v])
        n = len(v[0]["pods"])   # a CPU-bound floor: n times the CPU of one restore, on all cores
        memory = ", pretouched" if "pretouched" in what else ""
        base = first[f"restore x1{memory}"]
        floor = n * median([rnd["busy_core_s"] for rnd in rounds[f"restore x1{memory}"]]) / cores \
            if what.startswith("restore") else None
        rows.append([what, f"{sum(p['restored'] for p in pods[what])}/{len(pods[what])}", f"{first[what]:.2f}",
                     f"{median(slowest):.2f}", f"{max(slowest):.2f}", f"{first[what] / base:.2f}",
                     f"{median(slowest) / base:.2f}", f"{busy:.2f}",
                     f"{100 * busy / cores / median([rnd['window_s'] for rnd in v]):.0f}%",
                     f"{median([rnd['background_cores'] for rnd in v]):.2f} / "
                     f"{median([rnd['after_cores'] for rnd in v]):.2f}",
                     f"{max(floor, base):.2f}" if floor is not None else ""])
        b = breakdown(pods[what])
        stage_rows.append([what] + [f"{b[k]:.2f}" if k in b else "" for k in COLUMNS])
        if what.startswith("restore x4"):
            worst = [s / base for s in slowest]
            verdicts.append(f"{what}: {'yes' if median(worst) <= 2 else 'no'} (slowest of 4 pods: median "
                            f"{median(worst):.2f}x a single restore, worst round {max(worst):.2f}x)")
    for memory in ("", ", pretouched"):
        one, four = breakdown(pods[f"restore x1{memory}"]), breakdown(pods[f"restore x4{memory}"])
        stage_rows.append([f"x4 / x1{memory}"] + [f"{four[k] / one[k]:.1f}x" if one.get(k, 0) >= 0.005 else ""
                                                  for k in COLUMNS])
    m = result["machine"]
    return (f"{m['date']}, {m['cores']} cores ({m['cpu']}), kernel {m['kernel']}, {m['runc']}, "
            f"CRIU {m['criu'].split()[-1]}. "
            f"CPU warm-worker with {result['ballast_mb']} MB of ballast: snapshot "
            f"{result['snapshot_bytes'] / 1e6:.0f} MB, captured in {result['capture_s']:.2f} s; CRIU readers "
            f"{result['restore_threads']}, THP {result['thp']}; page cache warm for everything compared; "
            f"{result['repeats']} rounds. Node B: {result['second_node']}. Memory first touched: "
            f"{result['first_touch_gbps']} GB/s, touched again at once: {result['touch_again_gbps']} GB/s.\n\n"
            "Pod start (RunPodSandbox) to first HTTP 200, seconds; ratios to the median single restore (of the "
            "same memory state); machine CPU busy from the first RunPodSandbox to the last answer, and before "
            "and after (other work, cores: a scenario is measured again, up to 3 tries, if the machine was busy "
            "after it); CPU floor: N x the busy core-s of one restore / cores, or one restore\n\n"
            + common.table(["pods", "restored", "median per pod", "slowest pod (median)", "slowest pod (worst)",
                            "per pod / single", "slowest / single", "busy core-s", "busy % of cores",
                            "background before / after", "CPU floor"], rows)
            + "\n\nWhere the time goes (medians over pods, seconds): the CRI calls; inside StartContainer, what "
              "rewarm-runc's engine timed (`restored` event; fingerprint includes taking the store's shared "
              "read lock, runtime_restore is `runc restore` with CRIU)\n\n"
            + common.table(["pods", *COLUMNS], stage_rows)
            + "\n\nEach of 4 restores at once within 2x of a single restore: " + "; ".join(verdicts)
            + f". Pull on miss then restore on node B: {first[PULL]:.2f} s, {first[PULL] / first['restore x1']:.2f}x "
              f"node A's local restore, {first[PULL] / first[COLD]:.2f}x a cold start ({first[COLD]:.2f} s).")


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--ballast-mb", type=int, default=256)
    args = p.parse_args()
    work = os.path.join("/var/tmp", f"rewarm-replicas-{os.getpid()}")
    os.makedirs(work)
    try:
        result = run(args.repeats, args.ballast_mb, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    common.write("replicas", result, report(result))


if __name__ == "__main__":
    main()
