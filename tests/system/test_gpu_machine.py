"""GPU proof (runs only where an NVIDIA GPU with the checkpoint API is present; skipped elsewhere).

A torch worker holding >= 10 GiB of GPU memory, a captured CUDA graph and an HTTP endpoint runs as
a runc container, is captured with rewarm's capture, and is restored as a new container (new id,
bundle and network namespace) through rewarm-runc. Its measurements are printed as one JSON line
(run with -s to keep them).
"""
from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import threading
import time

import pytest

from helpers import clone_entry, events, gpu_usable
from runtime.snapshot import store
from runtime.host.files import read_json, write_json
from runtime.engine import capture
from runtime.gpu import nvml
from runtime.model import layout
from runtime.model.errors import CaptureFailed
from runtime.lab.runc_lab import CHECKOUT, Lab


pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not gpu_usable(), reason="needs an NVIDIA GPU with the CUDA checkpoint API")]
WORKER = os.path.join(CHECKOUT, "examples", "gpu-worker")
RESULTS: dict = {}


def gpu_worker(lab: Lab, annotations: dict) -> object:
    return lab.gpu_worker(annotations, env={"GPU_GIB": "10"}, app_dir=WORKER)


def gpu_used_bytes() -> int:
    import pynvml
    pynvml.nvmlInit()
    try:
        return pynvml.nvmlDeviceGetMemoryInfo(pynvml.nvmlDeviceGetHandleByIndex(0)).used
    finally:
        pynvml.nvmlShutdown()


@pytest.fixture(scope="module")
def source(node, tmp_path_factory):
    directory = str(tmp_path_factory.mktemp("gpu-source"))
    os.chmod(directory, 0o755)
    lab = Lab(directory)
    c = lab.create("gsrc", gpu_worker(lab, {"rewarm.dev/snapshot": "gpu-worker"}))
    answer, seconds = c.wait_ready(timeout=600)
    RESULTS["cold_start_to_first_answer_s"] = round(seconds, 2)
    RESULTS["gpu_bytes"] = answer["gpu_bytes"]
    yield {"lab": lab, "container": c, "answer": answer}
    lab.close()
    print("gpu results:", json.dumps(RESULTS))


def test_gpu_worker_is_captured_and_restored_bit_identical(source, node, tmp_path_factory):
    c = source["container"]
    entry = capture.capture(node, source["lab"].runc_root, c.cid, "gpu-worker", leave_running=True)
    RESULTS["snapshot_bytes"] = entry.size()
    RESULTS["capture_s"] = entry.manifest.capture.seconds
    RESULTS["gpu_fingerprint"] = entry.manifest.fingerprint.gpu
    assert list(entry.manifest.gpu_processes.values()) == [entry.manifest.gpu_uuids]  # the worker, on its GPU
    assert list(entry.manifest.gpu_uuids) == nvml.uuids_of_spec(read_json(os.path.join(c.bundle.path, "config.json")))
    directory = str(tmp_path_factory.mktemp("gpu-restore"))
    os.chmod(directory, 0o755)
    lab = Lab(directory)
    try:
        before = gpu_used_bytes()
        r = lab.create("grestored", gpu_worker(lab, {"rewarm.dev/snapshot": "gpu-worker"}))
        answer, seconds = r.wait_ready(timeout=300)
        RESULTS["restore_to_first_answer_s"] = round(seconds, 2)
        RESULTS["restore_stages_s"] = stages = events(node, "restored")[-1]["stages"]
        assert {"cuda_restore", "cuda_unlock", "criu"} <= set(stages)   # every CUDA step timed
        assert answer == source["answer"]  # same boot id, weights and CUDA-graph output, bit for bit
        assert c.get() == source["answer"]  # the source still serves too
        assert "network" in stages   # the pod's netns prepared before CRIU bound its sockets
        r.runtime_cmd("kill", r.cid, "KILL", check=True)
        deadline = time.monotonic() + 30
        while r.state().get("status") != "stopped" and time.monotonic() < deadline:
            time.sleep(0.1)
        r.runtime_cmd("delete", r.cid, check=True)
        deadline = time.monotonic() + 30   # the driver frees a dead process's memory shortly after
        while gpu_used_bytes() >= before + (1 << 30) and time.monotonic() < deadline:
            time.sleep(0.2)
        RESULTS["gpu_used_before_restore"], RESULTS["gpu_used_after_kill"] = before, gpu_used_bytes()
        assert gpu_used_bytes() < before + (1 << 30)  # the restored copy's GPU memory is free again
    finally:
        lab.close()


def test_another_gpu_model_is_refused_before_criu_runs(source, node, tmp_path_factory):
    entry = store.Store(node.store).entries("default", "gpu-worker")[0]
    path = clone_entry(node, entry, "gpu-other-model")
    meta = read_json(os.path.join(path, layout.MANIFEST))
    meta["fingerprint"]["gpu"]["model"] = "NVIDIA A100-SXM4-80GB"
    write_json(os.path.join(path, layout.MANIFEST), meta)
    directory = str(tmp_path_factory.mktemp("gpu-other"))
    os.chmod(directory, 0o755)
    lab = Lab(directory)
    try:
        c = lab.create("gother", gpu_worker(lab, {"rewarm.dev/snapshot": "gpu-other-model"}))
        assert c.create_rc == 0
        reason = events(node, "cold-start")[-1]["reason"]
        assert "gpu: snapshot has" in reason and "A100" in reason
        assert "runtime_restore" not in json.dumps(events(node, "cold-start")[-1])
    finally:
        lab.close()


def test_cuda_restore_through_a_device_map():
    """Checkpoint a bare CUDA process with rewarm's cuda-checkpoint, restore it with its GPU mapped
    to itself (or to GPU 1 on a multi-GPU machine), and check its memory survived."""
    inv = nvml.inventory()
    target = inv.gpus[1] if len(inv.gpus) > 1 and inv.gpus[1].model == inv.gpus[0].model else inv.gpus[0]
    code = ("import torch, sys, time\n"
            "x = torch.arange(1 << 26, device='cuda', dtype=torch.float32)\n"
            "torch.cuda.synchronize(); print(float(x.sum()), flush=True)\n"
            "sys.stdin.readline(); print(float(x.sum()), x.device, flush=True)\n")
    proc = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                            env={**os.environ, "CUDA_VISIBLE_DEVICES": "0"})
    first = proc.stdout.readline().strip()
    cmd = [sys.executable, "-m", "runtime.gpu.cuda_cli"]
    pid = str(proc.pid)
    for step in (["--action", "lock"], ["--action", "checkpoint"]):
        subprocess.run(cmd + step + ["--pid", pid], check=True)
    assert subprocess.run(cmd + ["--get-state", "--pid", pid], capture_output=True, text=True).stdout.strip() == "checkpointed"
    subprocess.run(cmd + ["--action", "restore", "--pid", pid, "--device-map", f"{inv.gpus[0].uuid}={target.uuid}"], check=True)
    subprocess.run(cmd + ["--action", "unlock", "--pid", pid], check=True)
    proc.stdin.write("\n")
    proc.stdin.flush()
    second = proc.stdout.readline().strip()
    proc.wait(timeout=60)
    RESULTS["device_map_restore"] = {"from": inv.gpus[0].uuid, "to": target.uuid, "before": first, "after": second}
    assert second.split()[0] == first
    missing = subprocess.run(cmd + ["--get-state", "--pid", "999999"], capture_output=True, text=True)
    assert missing.returncode == 1 and "cuCheckpointProcessGetState failed" in missing.stderr


def test_a_failed_capture_leaves_the_gpu_worker_running_and_unlocked(source, node, tmp_path):
    """The store has room for the capture when it starts; another writer fills it once CRIU writes
    pages, i.e. after the GPU memory was checkpointed into the process: the dump fails there."""
    small = tmp_path / "small-store"
    small.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16g", "tmpfs", str(small)], check=True)
    staging = small / "store" / "tmp"

    def fill_once_pages_are_written() -> None:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            if staging.is_dir() and any(staging.glob("*/checkpoint/pages-*.img")):
                break
            time.sleep(0.01)
        subprocess.run(["dd", "if=/dev/zero", f"of={small / 'filler'}", "bs=16M"], capture_output=True)
    filler = threading.Thread(target=fill_once_pages_are_written, daemon=True)
    filler.start()
    try:
        with pytest.raises(CaptureFailed) as failure:  # CRIU runs out of space after the GPU was checkpointed
            capture.capture(dataclasses.replace(node, store=str(small / "store")), source["lab"].runc_root,
                            source["container"].cid, "doomed", leave_running=True)
        filler.join(60)
    finally:
        subprocess.run(["umount", "-l", str(small)])
    RESULTS["failed_capture_reason"] = str(failure.value)[:600]
    assert source["container"].get(timeout=30) == source["answer"]  # still serving, state intact
    state = subprocess.run([sys.executable, "-m", "runtime.gpu.cuda_cli", "--get-state", "--pid",
                            str(source["container"].state()["pid"])], capture_output=True, text=True)
    assert state.stdout.strip() == "running", state.stderr
