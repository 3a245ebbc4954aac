"""The LLM worker on a GPU (runs only where an NVIDIA GPU with the checkpoint API is present): its
weights leave the GPU in the quiesce hook and come back from the model files in the resume hook
(examples/llm-worker/gpu_memory.py), under CUDA graphs captured for their addresses.

- the sleep really gives the weights' GPU memory back (NVML's view of the worker process), and the
  wake brings back a worker that answers the same tokens;
- a restore of the capture answers the captured worker's tokens, through its CUDA graphs;
- model files changed after the capture fail the resume hook, so the pod cold-starts, with the
  reason in the event log, and answers from the new start.
"""
from __future__ import annotations

import os
import subprocess
import sys

import pytest

from helpers import events, gpu_usable
from runtime.engine import capture
from runtime.lab.runc_lab import CHECKOUT, Lab

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not gpu_usable(), reason="needs an NVIDIA GPU with the CUDA checkpoint API")]
WORKER = os.path.join(CHECKOUT, "examples", "llm-worker")
PORT = 8000
PROMPT = {"prompt": "A restored worker keeps its CUDA graphs because", "max_tokens": 12}
BATCH = {"prompt": ["one", PROMPT["prompt"], "three", "four", "five"], "max_tokens": 12}   # the graph of batch 8
HOOKS = {"rewarm.dev/quiesce-http": f"http://127.0.0.1:{PORT}/sleep",
         "rewarm.dev/resume-http": f"http://127.0.0.1:{PORT}/wake_up"}


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("gpu-models") / "small")
    subprocess.run([sys.executable, os.path.join(WORKER, "make_weights.py"), path, "--size", "small", "--device", "cuda"],
                   check=True, capture_output=True)
    os.chmod(os.path.dirname(path), 0o755)
    return path


def worker(lab: Lab, model_dir: str, snapshot: str):  # type: ignore[no-untyped-def]
    w = lab.gpu_worker({"rewarm.dev/snapshot": snapshot, **HOOKS},
                       {"MODEL_DIR": "/models/llm", "PORT": str(PORT), "HF_HUB_OFFLINE": "1"}, WORKER, script="server.py")
    w.binds["/models/llm"] = model_dir
    return w


def gpu_bytes_of(pid: int) -> int:
    import pynvml
    pynvml.nvmlInit()
    try:
        handle = pynvml.nvmlDeviceGetHandleByIndex(0)
        return sum(p.usedGpuMemory or 0 for p in pynvml.nvmlDeviceGetComputeRunningProcesses(handle) if p.pid == pid)
    finally:
        pynvml.nvmlShutdown()


def test_weights_leave_the_gpu_for_a_capture_and_come_back(node, tmp_path, model_dir):
    directory = str(tmp_path / "lab")
    os.makedirs(directory)
    os.chmod(directory, 0o755)
    weight_bytes = sum(os.path.getsize(os.path.join(model_dir, f)) for f in os.listdir(model_dir)
                       if f.endswith(".safetensors"))
    lab = Lab(directory, port=PORT)
    try:
        cold = lab.create("llm-cold", worker(lab, model_dir, "llm-gpu"))
        health, _ = cold.wait_ready(timeout=600, path="/health")
        assert health["device"] == "cuda" and health["cuda_graphs"] == [1, 2, 4, 8], cold.text()[-2000:]
        first = cold.post("/v1/completions", PROMPT)["choices"][0]["token_ids"]
        batch = [c["token_ids"] for c in cold.post("/v1/completions", BATCH)["choices"]]
        pid = int(cold.state()["pid"])

        awake = gpu_bytes_of(pid)
        slept = cold.post("/sleep", {})
        assert slept["sleeping"] is True and slept["reload_files"], slept
        asleep = gpu_bytes_of(pid)
        woke = cold.post("/wake_up", {})
        assert woke is not None and woke["weights"]["bytes"] >= weight_bytes * 0.99, cold.text()[-2000:]
        assert awake - asleep >= weight_bytes * 0.95, (awake, asleep, weight_bytes)   # the weights left the GPU
        assert cold.post("/v1/completions", PROMPT)["choices"][0]["token_ids"] == first

        entry = capture.capture(node, lab.runc_root, cold.cid, "llm-gpu", leave_running=True)
        shards = sorted(f for f in os.listdir(model_dir) if f.endswith(".safetensors"))
        assert [f.path for f in entry.manifest.reload_files] == [f"/models/llm/{f}" for f in shards]
        assert cold.post("/v1/completions", PROMPT)["choices"][0]["token_ids"] == first   # the source woke too
        restored = lab.create("llm-restored", worker(lab, model_dir, "llm-gpu"))
        again = restored.get("/health", timeout=30)
        assert again is not None and again["boot_id"] == health["boot_id"], restored.runtime_log()[-3000:]
        assert restored.post("/v1/completions", PROMPT)["choices"][0]["token_ids"] == first
        assert [c["token_ids"] for c in restored.post("/v1/completions", BATCH)["choices"]] == batch
        restored.destroy()
        lab.containers.remove(restored)

        # the model changes under the snapshot: the restored copy must not serve the old weights' graphs
        shard = next(os.path.join(model_dir, f) for f in sorted(os.listdir(model_dir)) if f.endswith(".safetensors"))
        st = os.stat(shard)
        os.utime(shard, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))
        try:
            changed = lab.create("llm-changed", worker(lab, model_dir, "llm-gpu"))
            fresh, _ = changed.wait_ready(timeout=600, path="/health")
        finally:
            os.utime(shard, ns=(st.st_atime_ns, st.st_mtime_ns))
        assert fresh["boot_id"] != health["boot_id"]   # a cold start, not the snapshot
        reasons = [e["reason"] for e in events(node, "cold-start") if e.get("container") == changed.cid]
        assert reasons and "resume hook" in reasons[-1] and "changed on disk" in reasons[-1], reasons
    finally:
        lab.close()
