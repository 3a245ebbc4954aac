"""A stock serving engine (vLLM or SGLang) through rewarm-runc on a GPU node: cold start against
restore to the first token, with the page cache warm and dropped, in each mode of its rewarm preset
(vLLM: `rewarm.dev/sleep-level` 1, 2 and weights-resident; SGLang: its one mode) and with the engine
flags given (a weight loader, say).

The server is the engine's own, as pip installs it, with its defaults: vLLM's OpenAI server
(`python -m vllm.entrypoints.openai.api_server`: multiprocess engine, torch.compile, CUDA graphs)
with `--enable-sleep-mode` and VLLM_SERVER_DEV_MODE=1; SGLang's `python -m sglang.launch_server`
(tokenizer manager, scheduler and detokenizer processes, CUDA graphs) with `--enable-memory-saver`,
`--attention-backend triton` and `--sampling-backend pytorch` (the offline kit leaves FlashAttention 3
and FlashInfer's sampler out); plus the flags of --engine-arg and one annotation, `rewarm.dev/engine`;
no worker code of ours. One cold start is captured once per mode of --levels while it keeps serving
(vLLM: level 1 weights to host memory, level 2 weights dropped and read back by `reload_weights`
through the loader the flags choose, weights-resident weights reloaded onto the GPU before the
capture; each snapshot taken with its level's annotation written into the running container's spec,
as a pod asking for that level would have it; level 1 goes last, for it leaves its 15 GB weight
backup in torch's pinned-memory cache). Cold starts name a snapshot that never exists. A second cold
start has the model files in the page cache. Then, per mode, --repeats restores after `rewarm warm`
and one after a page-cache drop; each must answer the cold start's greedy text.

Every stage: the engine's own start (weights, compile, CUDA graphs, engine init) from its log; the
restore's (engine start, store checks, rootfs, CRIU, CUDA driver wait / queries / restore / unlock,
the resume hook and each of its calls) from rewarm's event; create, first answer and first token
from here, the clock starting at the runtime's create.
Bytes read from the disk during each run come from /proc/diskstats; the disk's read bandwidth is
measured in the same run, first (the largest model file, page cache dropped), so that no drop comes
between the warm cold start and the warm restores. CRIU's log of each restore is kept in --work.

Phases, so that a run fits into the GPU node's time slices: `cold` (yardsticks, cold start,
captures) and `restores` (the warm cold start, restores, results). State lives in --work.
Usage: python3 benchmarks/serving.py --engine vllm --model /opt/vmodel-8b --site /opt/vsite --label h100 \
          [--levels 2,weights-resident] [--engine-arg=--load-format=instanttensor ...] [--env K=V ...] [--flags NAME]
       python3 benchmarks/serving.py --engine sglang --model /opt/vmodel-8b --site /opt/sgsite --label h100
Writes benchmarks/results/ENGINE_<size>[_FLAGS][_LABEL].{json,md}; benchmarks/chart.py draws a vLLM one.
"""
from __future__ import annotations

import argparse
import glob
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tarfile
import threading
import time

import common
from runtime.host import files, settings_file
from runtime.netns import netns_http
from runtime.observe import logs
from runtime.model import layout
from runtime.snapshot import store
from runtime.engine import capture, warm
from runtime.engine.restore import RESTORE_LOG_COPY
from runtime.front.names import CONFIG_ENV
from runtime.lab.private_node import write_config
from runtime.lab.runc_lab import Container, Lab
from runtime.model.engines import ENGINES

PROMPT = {"model": "/models/llm", "prompt": "The fastest way to start an inference worker is", "temperature": 0}
NO_LEVEL = "-"   # the mode of an engine without sleep levels (SGLang)


def libcudart_dirs() -> list[str]:
    """Where pip's NVIDIA wheels of this node keep libcudart.so.13: torch_memory_saver's LD_PRELOADed
    hook needs it on the library path."""
    import nvidia   # the node's CUDA wheels (torch's)
    return sorted({os.path.dirname(p) for d in nvidia.__path__ for p in glob.glob(d + "/**/libcudart.so.13",
                                                                                 recursive=True)})


class Server:
    """What differs between engines: their server's command line and environment, the log lines of
    their own start, and the preset's modes."""
    title = ""
    module = ""
    levels = ""
    stages: dict[str, re.Pattern[str]] = {}
    flush_before_text = ""   # the call that empties its prefix cache before the greedy text is asked for

    def args(self, gpu_mem: float | None, port: int) -> list[str]:
        raise NotImplementedError

    def env(self) -> dict[str, str]:
        return {}

    def annotations(self, level: str) -> dict[str, str]:
        return {}


class Vllm(Server):
    title = "vLLM 0.24.0 (OpenAI server, its defaults: multiprocess engine, torch.compile, CUDA graphs"
    module = "vllm.entrypoints.openai.api_server"
    levels = "2,weights-resident"
    stages = {
        "weights": re.compile(r"Loading weights took ([\d.]+) ?s"),
        "model_load": re.compile(r"Model loading took [\d.]+ ?GiB (?:memory )?and ([\d.]+) ?s"),
        "torch_compile": re.compile(r"torch\.compile takes ([\d.]+) ?s in total"),
        "cuda_graphs": re.compile(r"Graph capturing finished in ([\d.]+) ?sec"),
        "engine_init": re.compile(r"init engine \(profile, create kv cache, warmup model\) took ([\d.]+) ?s"),
    }

    def args(self, gpu_mem: float | None, port: int) -> list[str]:
        return ["--model", "/models/llm", "--dtype", "bfloat16", "--max-model-len", "2048", "--port", str(port),
                "--enable-sleep-mode", *(["--gpu-memory-utilization", str(gpu_mem)] if gpu_mem else [])]

    def env(self) -> dict[str, str]:
        return {"VLLM_SERVER_DEV_MODE": "1", "VLLM_USE_FLASHINFER_SAMPLER": "0", "VLLM_NO_USAGE_STATS": "1",
                "NCCL_NVLS_ENABLE": "0"}

    def annotations(self, level: str) -> dict[str, str]:
        return {"rewarm.dev/sleep-level": level}


class Sglang(Server):
    title = "SGLang 0.5.17 (launch_server, its defaults: tokenizer manager, scheduler and detokenizer processes, CUDA graphs"
    module = "sglang.launch_server"
    levels = NO_LEVEL
    # Its /health generates a token: the cold server's first request found that prefix cached, a restored
    # one's did not (the capture flushed it), and a prefill split differently rounds differently, which
    # flips near-ties of a random-weight model's greedy text. Both sides prefill the text's prompt whole.
    flush_before_text = "/flush_cache"
    stages = {
        "distributed": re.compile(r"Init torch distributed ends\. elapsed=([\d.]+) s"),
        "weights": re.compile(r"Load weight end\. elapsed=([\d.]+) s"),
        "cuda_graphs_prefill": re.compile(r"Capture target prefill CUDA graph end\. elapsed=([\d.]+) s"),
        "cuda_graphs_decode": re.compile(r"Capture target decode CUDA graph end\. elapsed=([\d.]+) s"),
        "scheduler": re.compile(r"Engine startup timings \(s\):.*scheduler_e2e=([\d.]+)"),
    }

    def args(self, gpu_mem: float | None, port: int) -> list[str]:
        return ["--model-path", "/models/llm", "--host", "127.0.0.1", "--port", str(port), "--enable-memory-saver",
                "--attention-backend", "triton", "--sampling-backend", "pytorch",
                *(["--mem-fraction-static", str(gpu_mem)] if gpu_mem else [])]

    def env(self) -> dict[str, str]:
        """flashinfer, which SGLang's kernels call for norms, compiles its kernels on first use (the kit
        carries none built): it needs the node's nvcc and ninja on the PATH."""
        from runtime.gpu import nvml
        ninja, nvcc = shutil.which("ninja"), shutil.which("nvcc")
        tools = [os.path.dirname(t) for t in (ninja, nvcc) if t]
        return {"LD_LIBRARY_PATH": ":".join([*libcudart_dirs(), nvml.libcuda_dir()]),
                "PATH": ":".join(dict.fromkeys([*tools, "/usr/local/bin", "/usr/bin", "/bin"])),
                **({"CUDA_HOME": os.path.dirname(os.path.dirname(os.path.realpath(nvcc)))} if nvcc else {})}


SERVERS: dict[str, Server] = {"vllm": Vllm(), "sglang": Sglang()}


def disk_of(path: str) -> str:
    """The whole disk under a path, as /proc/diskstats names it."""
    dev = os.stat(path).st_dev
    sys_dir = os.path.realpath(f"/sys/dev/block/{os.major(dev)}:{os.minor(dev)}")
    if os.path.exists(os.path.join(sys_dir, "partition")):
        sys_dir = os.path.dirname(sys_dir)
    return os.path.basename(sys_dir)


def diff_summary(tar_path: str) -> dict:
    """What the captured container wrote into its rootfs (vLLM's compile caches): a restore lays it."""
    with tarfile.open(tar_path) as tar:
        members = tar.getmembers()
    return {"bytes": os.path.getsize(tar_path), "files": sum(m.isreg() for m in members), "entries": len(members)}


def bytes_read(disk: str) -> int:
    with open("/proc/diskstats") as f:
        for line in f:
            parts = line.split()
            if parts[2] == disk:
                return int(parts[5]) * 512
    return 0


class DiskTimeline:
    """The disk's bytes read every 50 ms while a run goes on: where it worked and where it idled."""

    def __init__(self, disk: str) -> None:
        self.disk, self.samples, self.t0 = disk, [], time.monotonic()
        self.done = threading.Event()
        self.thread = threading.Thread(target=self.sample, daemon=True)
        self.thread.start()

    def sample(self) -> None:
        first = bytes_read(self.disk)
        while not self.done.wait(0.05):
            self.samples.append((round(time.monotonic() - self.t0, 3), bytes_read(self.disk) - first))

    def stop(self, since: float) -> list[list[float]]:
        """[seconds from `since`, GB read] pairs."""
        self.done.set()
        self.thread.join()
        return [[round(self.t0 + t - since, 3), round(n / 1e9, 3)] for t, n in self.samples]


class Bench:
    def __init__(self, a: argparse.Namespace) -> None:
        self.a = a
        os.makedirs(a.work, mode=0o755, exist_ok=True)
        self.config = write_config(a.work)
        os.environ[CONFIG_ENV] = self.config
        self.cfg = settings_file.load(self.config)
        self.server = SERVERS[a.engine]
        self.port = ENGINES[a.engine].default_port
        self.lab = Lab(os.path.join(a.work, "lab"), port=self.port)
        self.size = a.size
        self.name = a.size + (f"-{a.flags}" if a.flags else "")
        self.caches = a.caches.split(",")
        self.levels = (a.levels or self.server.levels).split(",")   # level 1 leaves its weight backup in torch's pinned-memory cache:
        self.capture_order = sorted(self.levels, key=lambda lv: lv == "1")   # it is captured last
        self.state_file = os.path.join(a.work, f"state-{self.name}.json")
        self.disk = disk_of(a.work)

    def snapshot(self, level: str) -> str:
        return f"{self.a.engine}-{self.name}" + (f"-sleep-{level}" if level != NO_LEVEL else "")

    def annotations(self, level: str, cold: bool = False) -> dict[str, str]:
        """A restore's pod names the snapshot of its mode; a cold start's names one that never exists."""
        return {"rewarm.dev/snapshot": f"{self.a.engine}-{self.name}-cold" if cold else self.snapshot(level),
                "rewarm.dev/engine": self.a.engine, **(self.server.annotations(level) if level != NO_LEVEL else {})}

    def worker(self, level: str, cold: bool = False):  # type: ignore[no-untyped-def]
        env = {"PYTHONPATH": self.a.site, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HOME": "/root",
               **self.server.env(), **dict(e.split("=", 1) for e in self.a.env)}
        w = self.lab.gpu_worker(self.annotations(level, cold), env, os.path.dirname(os.path.abspath(__file__)))
        w.args = [sys.executable, "-m", self.server.module, *self.server.args(self.a.gpu_mem, self.port),
                  *self.a.engine_arg]
        w.binds["/models/llm"] = self.a.model
        return w

    def run_to_first_token(self, name: str, level: str, cold: bool = False,
                           timeout: float = 900) -> tuple[Container, dict]:
        """create + start as containerd's shim does, then time: the first /health answer, the first
        token (a one-token completion), and the greedy text of a 16-token one. The clock starts at
        the runtime's create, as for a pod's container: the pod's network namespace and its rootfs
        mount, made before it (by the CNI plugin and containerd), are left out of cold starts and
        restores alike."""
        read0, timeline = bytes_read(self.disk), DiskTimeline(self.disk)
        c = self.lab.create(name, self.worker(level, cold), start=False)
        t0 = c.started_at
        if c.create_rc != 0:
            raise RuntimeError(f"{name}: create failed: {c.runtime_log()[-3000:]}")
        t_created = time.monotonic()
        c.runtime_cmd("start", c.cid, check=True)
        deadline = time.monotonic() + timeout
        while netns_http.request(c.netns, f"http://127.0.0.1:{self.port}/health", timeout=2)[0] != 200:
            if time.monotonic() > deadline or c.state().get("status") == "stopped":
                raise RuntimeError(f"{name}: the engine did not become healthy; its output:\n{c.text()[-4000:]}")
            time.sleep(0.005)
        t_health = time.monotonic()
        first = c.post("/v1/completions", {**PROMPT, "max_tokens": 1})
        t_token = time.monotonic()
        if first is None:
            raise RuntimeError(f"{name}: no completion; output:\n{c.text()[-4000:]}")
        read1 = bytes_read(self.disk)
        disk = timeline.stop(t0)
        if self.server.flush_before_text:
            status, _ = netns_http.request(c.netns, f"http://127.0.0.1:{self.port}{self.server.flush_before_text}", b"", 30)
            if status != 200:
                raise RuntimeError(f"{name}: {self.server.flush_before_text} answered {status}")
        text = c.post("/v1/completions", {**PROMPT, "max_tokens": 16})["choices"][0]["text"]
        self.keep_output(c)
        return c, {"first_token_s": t_token - t0, "text": text, "disk_bytes": read1 - read0, "disk_timeline": disk,
                   "timeline": {"create": t_created - t0, "first_answer": t_health - t_created,
                                "first_token": t_token - t_health},
                   "engine_stages": {k: float(m.group(1)) for k, r in self.server.stages.items()
                                     if (m := r.search(c.text()))}}

    def keep_output(self, c: Container) -> None:
        """The server's own log (vLLM says what its sleep freed and what stays on the GPU)."""
        with open(os.path.join(self.a.work, f"{c.cid}.out"), "w") as f:
            f.write(c.text())

    def keep_restore_log(self, c: Container) -> None:
        """CRIU's log of the restore (runc asks it for every step, timestamped): where its time went."""
        kept = os.path.join(self.lab.runc_root, c.cid, RESTORE_LOG_COPY)
        if os.path.exists(kept):
            shutil.copy(kept, os.path.join(self.a.work, f"{c.cid}.criu-restore.log"))

    def events(self, container_id: str) -> list[dict]:
        return [e for e in logs.read_events(self.cfg.event_log) if e.get("container") == container_id]

    def save(self, state: dict) -> None:
        files.write_json(self.state_file, state)

    def load(self) -> dict:
        with open(self.state_file) as f:
            return json.load(f)

    # phases
    def cold(self) -> None:
        """The cold start that is captured: page cache dropped (a node's first start reads vLLM and the
        weights from disk), or with --caches warm alone, the model files read in first."""
        first = "dropped" if "dropped" in self.caches else "warm"
        yardsticks = self.yardsticks()   # first: the drop it needs must not come between the warm runs
        if first == "dropped":
            common.drop_page_cache()
        else:
            self.read_in_model()
        c, run = self.run_to_first_token(f"cold-{first}", self.levels[0], cold=True)
        print(f"cold start, page cache {first}: first token {run['first_token_s']:.1f}s, {run['engine_stages']}",
              flush=True)
        state = {"machine": common.machine(), "engine": self.a.engine, "size": self.size, "gpu_mem": self.a.gpu_mem,
                 "flags": self.a.flags, "engine_args": self.a.engine_arg, "env": self.a.env, "levels": self.levels,
                 "model_bytes": sum(os.path.getsize(os.path.join(self.a.model, f)) for f in os.listdir(self.a.model)),
                 "cold": {first: run}, "captures": {}, "yardsticks": yardsticks}
        from runtime.gpu import nvml
        state["gpu"] = [g.model for g in nvml.inventory().gpus][:1]
        spec_path = os.path.join(c.bundle.path, "config.json")
        for level in self.capture_order:
            spec = files.read_json(spec_path)   # the level this capture asks for, as a pod's spec would
            spec["annotations"].update(self.annotations(level))
            files.write_json(spec_path, spec)
            t = time.monotonic()
            entry = capture.capture(self.cfg, self.lab.runc_root, c.cid, self.snapshot(level),
                                    leave_running=level != self.capture_order[-1])
            state["captures"][level] = {"seconds": time.monotonic() - t, "bytes": entry.size(),
                                             "checkpoint_bytes": entry.manifest.capture.checkpoint_bytes,
                                             "reload_bytes": sum(f.size for f in entry.manifest.reload_files),
                                             "rootfs_diff": diff_summary(entry.file(layout.ROOTFS_DIFF))}
            print(f"captured {self.snapshot(level)}: {entry.size() / 1e9:.2f} GB in {time.monotonic() - t:.1f}s",
                  flush=True)
            self.keep_output(c)
            if level != self.capture_order[-1]:
                after = c.post("/v1/completions", {**PROMPT, "max_tokens": 16})["choices"][0]["text"]
                state["captures"][level]["source_text_after"] = after
        self.lab.containers.remove(c)
        c.bundle.remove()
        self.save(state)

    def yardsticks(self) -> dict:
        """The disk's and the page cache's read speed, on the largest model file (the same disk as
        the store)."""
        path = max((os.path.join(self.a.model, n) for n in os.listdir(self.a.model)), key=os.path.getsize)
        common.drop_page_cache()
        return {"file": os.path.basename(path), "file_bytes": os.path.getsize(path),
                "disk_read_gbps": common.read_gbps(path), "page_cache_read_gbps": common.read_gbps(path)}

    def read_in_model(self) -> None:
        for name in os.listdir(self.a.model):
            common.read_gbps(os.path.join(self.a.model, name))

    def restores(self) -> dict:
        state = self.load()
        if "warm" not in state["cold"]:   # the second cold start: vLLM and the weights in the page cache
            self.read_in_model()
            c, run = self.run_to_first_token("cold-warm", self.levels[0], cold=True)
            state["cold"]["warm"] = run
            c.destroy()
            self.lab.containers.remove(c)
            print(f"cold start, page cache warm: first token {run['first_token_s']:.1f}s", flush=True)
        state["restores"], state["thp"] = [], common.thp()
        common.thp("madvise")   # a node's usual setting; rewarm's CRIU faults huge pages where it fills
        try:
            self._restores(state)
        finally:
            common.thp(state["thp"])
        return state

    def _restores(self, state: dict) -> None:
        expected = next(iter(state["cold"].values()))["text"]   # the captured cold start's
        for level in self.levels:
            entry = store.Store(self.cfg.store).entries("default", self.snapshot(level))[0]
            for i, cache in enumerate(["warm"] * self.a.repeats + ["dropped"] * ("dropped" in self.caches)):
                if cache == "dropped":
                    common.drop_page_cache()
                else:
                    warm.warm(entry, self.cfg.restore_threads)
                common.pretouch(entry.size() / 2**30 + 2)
                c, run = self.run_to_first_token(f"restore-l{level}-{i}", level, timeout=600)
                restored = [e for e in self.events(c.cid) if e["event"] == "restored"]
                if not restored or run["text"] != expected:
                    raise RuntimeError(f"restore {level}/{i} did not answer as the captured server: {run['text']!r} "
                                       f"vs {expected!r}; events {self.events(c.cid)}")
                run.update(level=level, page_cache=cache, stages=restored[-1]["stages"],
                           engine_s=restored[-1]["seconds"])
                state["restores"].append(run)
                self.keep_restore_log(c)
                c.destroy()
                self.lab.containers.remove(c)
                print(f"restore {self.snapshot(level)}, page cache {cache}: first token {run['first_token_s']:.2f}s, "
                      f"stages {run['stages']}, read {run['disk_bytes'] / 1e9:.2f} GB from disk", flush=True)
                if cache == "dropped":
                    print("  disk GB/s each 0.5 s from the create: "
                          + " ".join(f"{g:.1f}" for g in rates(run["disk_timeline"], 0.5)), flush=True)
                self.save(state)


def rates(timeline: list[list[float]], step: float) -> list[float]:
    """GB/s over each `step` seconds of a disk timeline, from its clock's zero."""
    out, t_next = [], step
    last = max((gb for t, gb in timeline if t <= 0), default=0.0)   # (sampling began before the create)
    for t, gb in timeline:
        if t >= t_next:
            out.append((gb - last) / step)
            last, t_next = gb, t_next + step
    return out


STAGE_COLUMNS = [("engine start", ("startup", "prepare")), ("store checks", ("find", "fingerprint", "verify")), ("rootfs", ("rootfs",)),
                 ("CRIU", ("criu",)), ("CUDA driver wait", ("cuda_driver_init",)), ("CUDA queries", ("cuda_query",)),
                 ("CUDA restore", ("cuda_restore",)), ("CUDA unlock", ("cuda_unlock",)), ("resume hook", ("resume",))]


def report(state: dict, label: str) -> None:
    y = state["yardsticks"]
    engine = state.get("engine", "vllm")   # (results from before SGLang name none)
    mode = "sleep level" if engine == "vllm" else "mode"
    headers = [mode, "page cache", "first token (s)", "vs cold, same cache", *(c for c, _ in STAGE_COLUMNS),
               "its calls (s)", "engine, other", "start to /health", "one-token completion", "read from disk (GB)",
               "vs disk bound"]
    rows, medians = [], {}
    for level in state.get("levels", ["1", "2"]):
        for cache in ("warm", "dropped"):
            runs = [r for r in state["restores"] if str(r["level"]) == level and r["page_cache"] == cache]
            if runs:
                medians[(level, cache)] = statistics.median(r["first_token_s"] for r in runs)
            for r in runs:
                s, t = r["stages"], r["timeline"]
                cols = [sum(s.get(k, 0) for k in keys) for _, keys in STAGE_COLUMNS]
                bound = r["disk_bytes"] / 1e9 / y["disk_read_gbps"]
                cold = state["cold"].get(cache, {}).get("first_token_s")
                rows.append([level, cache, f"{r['first_token_s']:.2f}", f"{cold / r['first_token_s']:.1f}x" if cold else "-",
                             *(f"{c:.2f}" for c in cols),
                             ", ".join(f"{k.split(' ', 1)[1]} {v:.2f}" for k, v in s.items() if k.startswith("resume "))
                             or "-", f"{t['create'] - sum(cols):.2f}", f"{t['first_answer']:.3f}",
                             f"{t['first_token']:.3f}", f"{r['disk_bytes'] / 1e9:.2f}",
                             f"{r['first_token_s'] / bound:.2f}x" if cache == "dropped" and bound else "-"])
    cold_rows = [[cache, f"{run['first_token_s']:.1f}", f"{run['disk_bytes'] / 1e9:.2f}",
                  ", ".join(f"{k} {v:.1f}" for k, v in cold_stages(run).items())]
                 for cache, run in state["cold"].items()]
    caps = state["captures"]
    server = SERVERS[engine]
    flags = [*server.args(state["gpu_mem"], ENGINES[engine].default_port)[2:],   # (not the model's path)
             *state.get("engine_args", state.get("vllm_args", []))]
    lines = [
        f"Stock {server.title}; {' '.join(flags)}{', env ' + ' '.join(state['env']) if state.get('env') else ''}), "
        f"{state['size']} random-weight Llama ({state['model_bytes'] / 1e9:.1f} GB), on {state['gpu'][0]}, "
        f"{state['machine']['cores']} cores, {state['machine']['date']}; annotation rewarm.dev/engine: {engine}"
        + (" and rewarm.dev/sleep-level." if engine == "vllm" else "."),
        "Snapshots: " + "; ".join(f"{mode} {lv}: {c['bytes'] / 1e9:.2f} GB (+{c['reload_bytes'] / 1e9:.2f} GB of "
                                  f"model files read back), captured in {c['seconds']:.1f}s" for lv, c in caps.items()) + ".",
        f"Disk read {y['disk_read_gbps']:.2f} GB/s, page-cache read {y['page_cache_read_gbps']:.2f} GB/s ({y['file']}).",
        "Median first token: " + "; ".join(
            f"{mode} {lv}, page cache {cache}: {m:.2f}s" + (f" ({state['cold'][cache]['first_token_s'] / m:.1f}x "
                                                                 "the cold start)" if cache in state["cold"] else "")
            for (lv, cache), m in medians.items()) + ".",
        *state.get("notes", []),
        "", "Cold starts (the engine's own stages, s):", "",
        common.table(["page cache", "first token (s)", "read from disk (GB)", "its stages"], cold_rows),
        "", "Restores (every text identical to the cold start's greedy 16 tokens):", "",
        common.table(headers, rows)]
    name = state["size"] + (f"_{state['flags']}" if state.get("flags") else "")
    common.write(f"{engine}_{name}" + (f"_{label}" if label else ""), {**state, "label": label}, "\n".join(lines))


def cold_stages(run: dict) -> dict[str, float]:
    return run.get("engine_stages", run.get("vllm_stages", {}))


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--engine", default="vllm", choices=sorted(SERVERS))
    p.add_argument("--model", required=True, help="the model directory (make_model.py of the vLLM kit)")
    p.add_argument("--size", default="8b", help="its name in the results")
    p.add_argument("--site", default="/opt/vsite", help="the engine's packages, bound into the container under /opt")
    p.add_argument("--work", default="", help="default /var/tmp/rewarm-bench/ENGINE")
    p.add_argument("--phase", default="all", choices=["all", "cold", "restores"])
    p.add_argument("--gpu-mem", type=float, default=None,
                   help="vLLM's --gpu-memory-utilization, SGLang's --mem-fraction-static (default: the engine's own)")
    p.add_argument("--repeats", type=int, default=3, help="restores with the page cache warm, per sleep level")
    p.add_argument("--levels", default="", help="the preset's levels to capture and restore (vLLM: 2,weights-resident)")
    p.add_argument("--engine-arg", action="append", default=[],
                   help="a flag for the engine (a weight loader, say; repeatable)")
    p.add_argument("--env", action="append", default=[], help="KEY=VALUE for the engine's environment (repeatable)")
    p.add_argument("--flags", default="", help="a name for these flags in the snapshot and result names")
    p.add_argument("--caches", default="dropped,warm",
                   help="page-cache states to measure; `warm` alone: one cold start, warm, and warm restores")
    p.add_argument("--label", default="")
    a = p.parse_args()
    a.work = a.work or f"/var/tmp/rewarm-bench/{a.engine}"
    bench = Bench(a)
    try:
        if a.phase in ("all", "cold"):
            bench.cold()
        if a.phase in ("all", "restores"):
            report(bench.restores(), a.label)
    finally:
        bench.lab.close()
        subprocess.run(["sync"])


if __name__ == "__main__":
    main()
