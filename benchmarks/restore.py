"""Restore vs cold start of the LLM worker (examples/llm-worker: CUDA graphs of its decode step
captured at start), on the GPU or the CPU, in one run.

Through rewarm-runc: a cold start to the first token (weights from disk), a capture after the
worker's quiesce hook (on a GPU the worker gives back its weights there and reads them back in its
resume hook), then restores to the first token with THP `madvise` and `always`: one with the page
cache dropped, then --repeats with the snapshot and the weights read in by `rewarm warm`'s code
(the median counts). Every stage
from create to first token: the engine's (store checks, rootfs diff, CRIU and its memory fill,
the CUDA helper's driver wait, restore and unlock, the resume hook), the runtime's start, the first
HTTP answer and the first completion. In the same run, the machine's limits: disk and page-cache
read of the largest page image, the C fill from the page cache (benchmarks/fill_yardstick.c), and
host-to-device copy on a GPU. Each restore must answer with the captured worker's boot id and
tokens. With --cri (CPU), the same cold start and restore also go through containerd's CRI API.

Phases, so that a long GPU run can be split in two: `cold` (weights, cold start, capture) and
`restores` (yardsticks, restores, results); `all` does both. State lives in --work.
Usage: python3 benchmarks/restore.py --device cuda --size 8b --kv-gb 40
       python3 benchmarks/restore.py --device cpu --size small [--cri]
Writes benchmarks/results/restore_<device>_<size>[_LABEL].{json,md}; benchmarks/chart.py draws it.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time

import common
from runtime.host import settings_file
from runtime.observe import logs
from runtime.snapshot import store
from runtime.engine import capture, warm
from runtime.engine.restore import RESTORE_LOG_COPY
from runtime.front.names import CONFIG_ENV
from runtime.lab.private_node import write_config
from runtime.lab.runc_lab import Container, Lab

HERE = os.path.dirname(os.path.abspath(__file__))
WORKER = os.path.join(os.path.dirname(HERE), "examples", "llm-worker")
PORT = 8000
PROMPT = {"prompt": "The fastest way to start an inference worker is", "max_tokens": 16}
HOOKS = {"rewarm.dev/quiesce-http": f"http://127.0.0.1:{PORT}/sleep",
         "rewarm.dev/resume-http": f"http://127.0.0.1:{PORT}/wake_up"}
FILL = re.compile(r"pfill: task \d+: filled (\d+) bytes, (\d+) readers, ([\d.]+) s")
WAKE = re.compile(r"llm-worker: awake in ([\d.]+)s (\{.*\})")


class Bench:
    def __init__(self, a: argparse.Namespace):
        self.a = a
        os.makedirs(a.work, mode=0o755, exist_ok=True)
        self.models = os.path.join(a.work, "models", a.size)
        self.config = write_config(a.work)
        os.environ[CONFIG_ENV] = self.config
        self.cfg = settings_file.load(self.config)
        self.lab = Lab(os.path.join(a.work, "lab"), port=PORT)
        self.snapshot = f"llm-{a.size}"
        self.annotations = {"rewarm.dev/snapshot": self.snapshot, **(HOOKS if a.hooks else {})}
        self.gpu = a.device.startswith("cuda")
        self.python = sys.executable if self.gpu else "/usr/bin/python3"
        self.state_file = os.path.join(a.work, f"state-{a.device}-{a.size}.json")

    # the worker
    def env(self) -> dict[str, str]:
        env = {"MODEL_DIR": "/models/llm", "PORT": str(PORT), "DEVICE": self.a.device,
               "KV_CACHE_GB": str(self.a.kv_gb), "HF_HUB_OFFLINE": "1"}
        if not self.gpu:
            env.update(PYTHONPATH="/opt/torch", THREADS=str(os.cpu_count() or 2))
        return {**env, **dict(item.split("=", 1) for item in self.a.worker_env)}

    def worker(self):  # type: ignore[no-untyped-def]
        if self.gpu:
            w = self.lab.gpu_worker(self.annotations, self.env(), WORKER, script="server.py")
        else:
            w = self.lab.worker(self.annotations, env=self.env(), args=[self.python, "/app/server.py"], app_dir=WORKER)
            w.binds["/opt/torch"] = self.a.site
        w.binds["/models/llm"] = self.models
        return w

    def make_weights(self) -> None:
        env = {**os.environ, **({} if self.gpu else {"PYTHONPATH": self.a.site})}
        subprocess.run([self.python, os.path.join(WORKER, "make_weights.py"), self.models, "--size", self.a.size,
                        "--device", self.a.device], check=True, env=env)

    def run_to_first_token(self, name: str, timeout: float = 1800) -> tuple[Container, dict]:
        """Create and start a container the way containerd's shim does, then time each step to the
        first completion: create (restore or cold start), start, the first HTTP answer, the completion."""
        t0 = time.monotonic()
        c = self.lab.create(name, self.worker(), start=False)
        if c.create_rc != 0:
            raise RuntimeError(f"{name}: create failed: {c.runtime_log()[-2000:]}")
        t_created = time.monotonic()
        c.runtime_cmd("start", c.cid, check=True)
        t_started = time.monotonic()
        deadline = t_started + timeout
        while (health := c.get("/health", timeout=2)) is None:
            if time.monotonic() > deadline:
                raise TimeoutError(f"{name}: no answer; output:\n{c.text()[-3000:]}")
            time.sleep(0.005)
        t_health = time.monotonic()
        completion = c.post("/v1/completions", PROMPT)
        t_token = time.monotonic()
        if completion is None:
            raise RuntimeError(f"{name}: no completion; output:\n{c.text()[-3000:]}")
        return c, {"health": health, "first_token_s": t_token - t0, "tokens": completion["choices"][0]["token_ids"],
                   "boot_id": completion["system_fingerprint"],
                   "timeline": {"create": t_created - t0, "start": t_started - t_created,
                                "first_answer": t_health - t_started, "first_completion": t_token - t_health,
                                "completion_in_worker": completion.get("timing", {}).get("seconds", 0.0)}}

    def events(self, container_id: str) -> list[dict]:
        return [e for e in logs.read_events(self.cfg.event_log) if e.get("container") == container_id]

    # phases
    def cold(self) -> None:
        t = time.monotonic()
        self.make_weights()
        weights_s = time.monotonic() - t
        weight_bytes = sum(os.path.getsize(os.path.join(self.models, f)) for f in os.listdir(self.models))
        common.drop_page_cache()  # a node's first start reads the weights from disk
        c, run = self.run_to_first_token("cold")
        entry = capture.capture(self.cfg, self.lab.runc_root, c.cid, self.snapshot, leave_running=False)
        self.lab.containers.remove(c)
        c.bundle.remove()
        state = {"machine": common.machine(), "device": self.a.device, "size": self.a.size, "kv_gb": self.a.kv_gb,
                 "hooks": self.a.hooks, "weights_s": weights_s, "weight_bytes": weight_bytes, "cold": run,
                 "cold_events": self.events(c.cid), "entry": entry.ident, "snapshot_bytes": entry.size(),
                 "capture": vars(entry.manifest.capture),
                 "largest_file": max((entry.file(f) for f in entry.manifest.files if "pages-" in f),
                                     key=os.path.getsize)}
        if self.gpu:
            from runtime.gpu import nvml
            state["gpu"] = [g.model for g in nvml.inventory().gpus][:1]
        with open(self.state_file, "w") as f:
            json.dump(state, f, indent=2)
        print(f"cold start to first token {run['first_token_s']:.2f}s (worker stages {run['health']['stages']}); "
              f"snapshot {entry.size() / 1e9:.2f} GB captured in {entry.manifest.capture.seconds:.1f}s", flush=True)

    def yardsticks(self, state: dict, entry: store.Entry) -> dict:
        path = state["largest_file"]
        out = {"file": os.path.basename(path), "file_bytes": os.path.getsize(path)}
        common.drop_page_cache()
        out["disk_read_gbps"] = common.read_gbps(path)
        out["page_cache_read_gbps"] = common.read_gbps(path)
        common.drop_page_cache()   # rewarm warm from the disk: the snapshot and the files its worker reads back
        done = warm.warm(entry, self.cfg.restore_threads)
        out["warm_s"], out["warm_bytes"] = done.seconds, done.bytes_read
        with tempfile.TemporaryDirectory() as work:
            binary = os.path.join(work, "fill-yardstick")
            subprocess.run(["cc", "-O2", "-pthread", "-o", binary, os.path.join(HERE, "fill_yardstick.c")], check=True)
            threads = self.cfg.restore_threads
            fill = subprocess.run([binary, "-t", str(threads), "-m", "thp", "-r", "2", path], capture_output=True,
                                  text=True, check=True).stdout
            m = re.search(r"GB/s=([\d.]+)", fill.splitlines()[-1])
            out["fill_gbps"], out["fill_threads"] = float(m.group(1)) if m else 0.0, threads
        if self.gpu:
            code = ("import torch, time\n"
                    "x = torch.empty(2 << 30, dtype=torch.uint8).pin_memory(); y = torch.empty_like(x, device='cuda')\n"
                    "y.copy_(x); torch.cuda.synchronize(); t = time.time()\n"
                    "for _ in range(5): y.copy_(x, non_blocking=True)\n"
                    "torch.cuda.synchronize(); print(5 * x.numel() / (time.time() - t) / 1e9)\n")
            out["h2d_gbps"] = float(subprocess.run([self.python, "-c", code], capture_output=True, text=True,
                                                   check=True).stdout.strip())
        return out

    def restores(self) -> dict:
        with open(self.state_file) as f:
            state = json.load(f)
        entry = store.Store(self.cfg.store).entries("default", self.snapshot)[0]
        state["yardsticks"] = self.yardsticks(state, entry)
        original = common.thp()
        modes = [m for m in ("madvise", "always") if original is not None and common.thp(m) == m] or [original]
        # per THP mode: the page cache dropped (everything read from disk), then rewarm warm before
        # each of --repeats restores (the image's own files are then as warm as on a node that has
        # restored this worker before)
        variants = [(mode, cache) for mode in modes for cache in ("dropped", *["warm"] * self.a.repeats)
                    if not self.a.variants or f"{mode}:{cache}" in self.a.variants.split(",")]
        state["restores"] = []
        try:
            for i, (mode, cache) in enumerate(variants):
                common.thp(mode)
                if cache == "dropped":
                    common.drop_page_cache()
                else:   # rewarm warm: the snapshot and the model files its worker reads back on wake
                    warm.warm(entry, self.cfg.restore_threads)
                common.pretouch(state["snapshot_bytes"] / 2**30 + 2)   # last: see common.pretouch
                c, run = self.run_to_first_token(f"restore{i}", timeout=600)
                restored = [e for e in self.events(c.cid) if e["event"] == "restored"]
                if not restored or run["boot_id"] != state["cold"]["boot_id"] or run["tokens"] != state["cold"]["tokens"]:
                    raise RuntimeError(f"restore {i} did not give the captured worker: {self.events(c.cid)}")
                with open(os.path.join(self.lab.runc_root, c.cid, RESTORE_LOG_COPY), errors="replace") as f:
                    fills = [(int(m.group(1)), float(m.group(3))) for m in FILL.finditer(f.read())]
                wakes = [json.loads(m.group(2)) for m in WAKE.finditer(c.text())]
                run.update(wake=wakes[-1] if wakes else {}, thp=mode, page_cache=cache, stages=restored[-1]["stages"], engine_s=restored[-1]["seconds"],
                           fill_bytes=sum(b for b, _ in fills), fill_s=max((s for _, s in fills), default=0.0))
                state["restores"].append(run)
                c.destroy()
                self.lab.containers.remove(c)
                print(f"restore THP {mode}, page cache {cache}: first token {run['first_token_s']:.2f}s, "
                      f"timeline {run['timeline']}, stages {run['stages']}", flush=True)
        finally:
            common.thp(original)
        if self.a.cri:
            state["cri"] = cri_run(self)
        return state


def cri_run(bench: Bench) -> dict:
    """The same worker as an image, through containerd's CRI: cold pod captured on ready, then a restore."""
    from runtime.lab import oci_image
    from runtime.lab.containerd_lab import Lab as CriLab
    from runtime.lab.runc_lab import rewarm_runc
    lab = CriLab("bench-llm", rewarm_config=bench.config).setup(rewarm_runc())
    image = f"localhost/rewarm/llm-worker:{bench.a.size}"
    try:
        spec = oci_image.ImageSpec(name=image, entrypoint=["/usr/bin/python3", "/app/server.py"], workdir="/app",
                                   paths=oci_image.python_paths(packages=(bench.a.site,)),
                                   trees={"/app": WORKER, "/opt/torch": bench.a.site},
                                   files={"/etc/passwd": b"root:x:0:0:root:/root:/bin/sh\n", "/etc/group": b"root:x:0:\n"})
        oci_image.build_and_import(spec, lab.address)
        annotations = {"rewarm.dev/snapshot": f"cri-{bench.snapshot}", "rewarm.dev/capture": "on-ready",
                       **(HOOKS if bench.a.hooks else {})}
        env = {**bench.env(), "MODEL_DIR": "/models/llm"}
        cold = lab.pod("llm-cold", image, [], annotations=annotations, env=env, port=PORT,
                       mounts=[(bench.models, "/models/llm", True)])
        out = {"cold": first_token(cold)}
        store.Store(bench.cfg.store).wait_for("default", f"cri-{bench.snapshot}", timeout=600)
        cold.delete()
        restored = lab.pod("llm-restore", image, [], annotations=annotations, env=env, port=PORT,
                           mounts=[(bench.models, "/models/llm", True)])
        out["restore"] = first_token(restored)
        restored.delete()
        if out["restore"]["boot_id"] != out["cold"]["boot_id"]:
            raise RuntimeError(f"the CRI pod was not restored: {out}")
        return out
    finally:
        lab.destroy()


def first_token(pod, timeout: float = 1800) -> dict:  # type: ignore[no-untyped-def]
    """Seconds from RunPodSandbox to the first completion, and the worker's boot id."""
    deadline = time.monotonic() + timeout
    while not pod.get("/health", timeout=2):
        if time.monotonic() > deadline:
            raise TimeoutError(pod.log()[-2000:])
        time.sleep(0.01)
    completion = pod.post("/v1/completions", PROMPT)
    return {"first_token_s": time.monotonic() - pod.started, "boot_id": completion["system_fingerprint"]}


STAGE_COLUMNS = [("store checks", ("find", "fingerprint", "verify")), ("rootfs", ("rootfs",)),
                 ("CRIU", ("criu",)), ("CUDA driver wait", ("cuda_driver_init",)),
                 ("CUDA queries", ("cuda_query",)), ("CUDA restore", ("cuda_restore",)),
                 ("CUDA unlock", ("cuda_unlock",)), ("resume hook", ("resume",))]


def report(state: dict) -> None:
    cold = state["cold"]["first_token_s"]
    size = state["snapshot_bytes"]
    y = state["yardsticks"]
    header = ["THP", "page cache", "first token (s)", "vs cold", *(c for c, _ in STAGE_COLUMNS),
              "engine, other", "start", "first answer", "first completion", "memory fill GB/s", "weights read back GB/s"]
    rows = []
    for r in state["restores"]:
        s, t = r["stages"], r["timeline"]
        if "criu" not in s:
            s = {**s, "criu": s.get("runtime_restore", 0)}
        cols = [sum(s.get(k, 0) for k in keys) for _, keys in STAGE_COLUMNS]
        other = t["create"] - sum(cols)
        gbps = r["fill_bytes"] / r["fill_s"] / 1e9 if r["fill_s"] else size / s["criu"] / 1e9
        rows.append([r["thp"], r["page_cache"], f"{r['first_token_s']:.2f}", f"{cold / r['first_token_s']:.1f}x",
                     *(f"{c:.2f}" for c in cols), f"{other:.2f}", f"{t['start']:.3f}", f"{t['first_answer']:.3f}",
                     f"{t['first_completion']:.2f}", f"{gbps:.2f}",
                     f"{r['wake']['gbps']:.2f}" if r.get("wake", {}).get("gbps") else "-"])
    worker = state["cold"]["health"]
    where = state.get("gpu", [state["machine"]["cpu"]])[0]
    by = {}   # (THP, page cache) -> the run of median first-token time
    for key in {(r["thp"], r["page_cache"]) for r in state["restores"]}:
        runs = sorted((r for r in state["restores"] if (r["thp"], r["page_cache"]) == key),
                      key=lambda r: r["first_token_s"])
        by[key] = runs[(len(runs) - 1) // 2]
    lines = [
        f"LLM worker ({worker['params'] / 1e9:.2f}B params, {state['size']}, {worker['device']}, CUDA graphs for "
        f"batch sizes {worker.get('cuda_graphs') or 'none (CPU)'}"
        f"{', memory reserve %s GiB' % state['kv_gb'] if state['kv_gb'] else ''}) on {where}, "
        f"{state['machine']['cores']} cores, {state['machine']['date']}.",
        f"Weights {state['weight_bytes'] / 1e9:.2f} GB; snapshot {size / 1e9:.2f} GB, captured in "
        f"{state['capture']['seconds']:.1f}s{' after the quiesce hook' if state['hooks'] else ''}.",
        f"Cold start: {cold:.2f}s to the first token; its stages (worker's own clock, s): {worker['stages']}.",
        f"Yardsticks: disk read {y['disk_read_gbps']:.2f} GB/s, page-cache read {y['page_cache_read_gbps']:.2f} GB/s, "
        f"C fill from the page cache with {y['fill_threads']} threads and huge pages {y['fill_gbps']:.2f} GB/s"
        + (f", host-to-device {y['h2d_gbps']:.1f} GB/s" if "h2d_gbps" in y else "") + f" ({y['file']})."
        + (f" rewarm warm from the disk (the snapshot and the weights its worker reads back, "
           f"{y['warm_bytes'] / 1e9:.2f} GB) took {y['warm_s']:.2f}s." if "warm_s" in y else ""),
    ]
    for mode in ("madvise", "always"):
        warm_runs = sorted(r["first_token_s"] for r in state["restores"] if r["thp"] == mode and r["page_cache"] == "warm")
        if len(warm_runs) > 1:
            lines.append(f"THP {mode}, warm: {len(warm_runs)} restores to first token in "
                         + ", ".join(f"{x:.2f}" for x in warm_runs) + f" s (median {by[(mode, 'warm')]['first_token_s']:.2f}"
                         f" s, {cold / by[(mode, 'warm')]['first_token_s']:.1f}x the cold start).")
    if ("madvise", "warm") in by and ("madvise", "dropped") in by:
        w, d = by[("madvise", "warm")], by[("madvise", "dropped")]
        reread = d.get("wake", {}).get("bytes", 0)   # weights the worker reads back from the model files
        bound = (size + reread) / 1e9 / y["disk_read_gbps"] + w["first_token_s"]
        lines.append(f"THP madvise: warm {w['first_token_s']:.2f}s (median, {cold / w['first_token_s']:.1f}x); dropped "
                     f"{d['first_token_s']:.2f}s = {d['first_token_s'] / bound:.2f}x of (bytes / disk bandwidth + "
                     f"warm time) = {bound:.2f}s, the bytes being the snapshot's and the "
                     f"{reread / 1e9:.2f} GB of weights read back from the model files.")
    lines += ["", common.table(header, rows)]
    if "cri" in state:
        c = state["cri"]
        lines += ["", "Through containerd's CRI (RunPodSandbox to first token):", "",
                  common.table(["pod", "first token (s)", "vs cold"],
                               [["cold start", f"{c['cold']['first_token_s']:.2f}", "1.0x"],
                                ["restore", f"{c['restore']['first_token_s']:.2f}",
                                 f"{c['cold']['first_token_s'] / c['restore']['first_token_s']:.1f}x"]])]
    name = f"restore_{state['device'].split(':')[0]}_{state['size']}" + (f"_{state['label']}" if state.get("label") else "")
    common.write(name, state, "\n".join(lines))


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--size", default="small", choices=["tiny", "small", "8b"])
    p.add_argument("--work", default="/var/tmp/rewarm-bench/restore")
    p.add_argument("--phase", default="all", choices=["all", "cold", "restores"])
    p.add_argument("--site", default="/var/tmp/rewarm-bench/torch-site", help="CPU: torch + transformers for /usr/bin/python3")
    p.add_argument("--kv-gb", type=float, default=0, help="GPU memory the worker reserves up front (like vLLM's KV cache)")
    p.add_argument("--no-hooks", dest="hooks", action="store_false", help="capture without the worker's quiesce hook")
    p.add_argument("--cri", action="store_true", help="also cold start + restore through containerd's CRI")
    p.add_argument("--label", default="", help="suffix of the result files")
    p.add_argument("--worker-env", action="append", default=[], metavar="NAME=VALUE", help="more environment for the worker")
    p.add_argument("--variants", default="", help="restores to run, e.g. always:warm,madvise:dropped (default: dropped and warm, both THP modes)")
    p.add_argument("--repeats", type=int, default=3, help="restores with the page cache warm, per THP mode")
    a = p.parse_args()
    bench = Bench(a)
    try:
        if a.phase in ("all", "cold"):
            bench.cold()
        if a.phase in ("all", "restores"):
            state = bench.restores()
            state["label"] = a.label
            report(state)
    finally:
        bench.lab.close()


if __name__ == "__main__":
    main()
