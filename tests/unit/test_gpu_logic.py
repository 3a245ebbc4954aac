"""The GPU pieces that can be proven without a GPU: the driver binding's error paths, the
cuda-checkpoint command's protocol, and which GPUs a container gets and how they are remapped,
against recorded inventories. (The GPU machine runs test_gpu_machine.py.)"""
from __future__ import annotations

import ctypes
import os
import subprocess
import sys

import pytest

from runtime.gpu import driver, nvml
from runtime.gpu.cuda_cli import format_device_map, parse_device_map
from runtime.model import fingerprint
from runtime.model.errors import CudaUnavailable, GpuMismatch

H100 = "NVIDIA H100 80GB HBM3"
U0, U1 = "GPU-8c6a1b2e-0000-4000-8000-000000000000", "GPU-1f2e3d4c-1111-4111-8111-111111111111"


def gpu(index: int, uuid: str) -> nvml.Gpu:
    return nvml.Gpu(index=index, minor=index, uuid=uuid, model=H100, memory_bytes=80 << 30, mig=False, persistence=True)


TWO_H100 = nvml.Inventory([gpu(0, U0), gpu(1, U1)],
                         driver="580.159.04", cuda_driver="13.0")


def cli(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "runtime.gpu.cuda_cli", *args], capture_output=True, text=True,
                          env={**os.environ, **(env or {})})


def test_the_command_speaks_the_criu_plugin_protocol():
    assert "--action" in cli("-h").stdout  # CRIU's plugin disables itself without it
    assert "--get-restore-tid" in cli("-h").stdout and "--device-map" in cli("-h").stdout


def test_without_a_cuda_driver_the_command_fails_clearly():
    if os.path.exists("/dev/nvidiactl"):
        pytest.skip("this machine has an NVIDIA driver")
    out = cli("--get-state", "--pid", "1")
    assert out.returncode == 1 and "no CUDA driver" in out.stderr
    with pytest.raises(CudaUnavailable, match="no CUDA driver"):
        driver.Driver("libcuda-not-here.so.1")


def test_a_bad_device_map_is_refused_before_the_driver_is_touched():
    out = cli("--action", "restore", "--pid", "1", env={"REWARM_CUDA_DEVICE_MAP": "GPU-a"})
    assert out.returncode == 1 and "bad device map entry 'GPU-a'" in out.stderr


def test_device_map_text_round_trips():
    pairs = {U0: U1, U1: U0}
    assert parse_device_map(format_device_map(pairs)) == pairs
    assert parse_device_map("") == {}


def test_struct_layouts_match_the_driver_headers():
    assert ctypes.sizeof(driver._LockArgs) == 64
    assert ctypes.sizeof(driver._RestoreArgs) == 64
    assert ctypes.sizeof(driver._GpuPair) == 32
    assert driver.uuid_bytes(U0).hex() == "8c6a1b2e000040008000000000000000"


def spec(devices=(), env=(), annotations=None):
    return {"linux": {"devices": [{"path": p, "type": "c", "major": 195, "minor": 0} for p in devices]},
            "process": {"env": list(env)}, "annotations": annotations or {}}


@pytest.mark.parametrize("container, expected", [
    (spec(devices=["/dev/nvidia1", "/dev/nvidiactl", "/dev/nvidia-uvm"]), [U1]),
    (spec(env=["NVIDIA_VISIBLE_DEVICES=1,0"]), [U1, U0]),
    (spec(env=[f"NVIDIA_VISIBLE_DEVICES={U0}"]), [U0]),
    (spec(env=["NVIDIA_VISIBLE_DEVICES=all"]), [U0, U1]),
    (spec(annotations={"cdi.k8s.io/gpu": "nvidia.com/gpu=1"}), [U1]),
])
def test_the_gpus_a_container_gets(container, expected):
    assert [g.uuid for g in nvml.container_gpus(container, TWO_H100)] == expected


def test_a_gpu_the_node_lacks_is_a_reason_to_cold_start():
    with pytest.raises(GpuMismatch, match="does not have"):
        nvml.container_gpus(spec(env=["NVIDIA_VISIBLE_DEVICES=3"]), TWO_H100)


def test_restore_onto_other_gpus_pairs_them_in_device_order():
    assert nvml.device_map([U0], [U0]) == {}
    assert nvml.device_map([U0], [U1]) == {U0: U1}
    assert nvml.device_map([U0, U1], [U1, U0]) == {U0: U1, U1: U0}
    with pytest.raises(GpuMismatch, match="snapshot used 2 GPU"):
        nvml.device_map([U0, U1], [U1])


def test_another_gpu_model_is_a_fingerprint_difference():
    base = dict(image="i", args=("a",), cwd="/", env={}, arch="x86_64", cpu="c", kernel="k", criu="4.2.1", runtime="r")
    recorded = fingerprint.Fingerprint(**base, gpu={"model": "NVIDIA A100-SXM4-80GB", "count": 1, "driver": "580.159.04", "cuda_driver": "13.0"})
    here = fingerprint.Fingerprint(**base, gpu={"model": H100, "count": 1, "driver": "580.159.04", "cuda_driver": "13.0"})
    (reason,) = fingerprint.differences(recorded, here)
    assert reason.startswith("gpu: snapshot has") and "A100" in reason and "H100" in reason


def test_the_inventory_read_ahead_is_waited_for_not_repeated(monkeypatch):
    """A create begins NVML's slow start on another thread; the fingerprint then waits for that read
    instead of making its own."""
    import functools
    import threading
    reads: list[str] = []
    gate = threading.Event()

    @functools.cache   # as the real reader
    def slow_read() -> nvml.Inventory:
        assert gate.wait(5)
        reads.append("NVML read")
        return TWO_H100

    monkeypatch.setattr(nvml, "_read_inventory", slow_read)
    nvml.read_ahead()
    answer: list[nvml.Inventory] = []
    reader = threading.Thread(target=lambda: answer.append(nvml.inventory()))
    reader.start()
    gate.set()
    reader.join(5)
    assert answer == [TWO_H100] and reads == ["NVML read"]


def test_a_failed_read_ahead_leaves_the_failure_to_the_reader(monkeypatch):
    def failing() -> nvml.Inventory:
        raise RuntimeError("NVML Shared Library Not Found")

    monkeypatch.setattr(nvml, "_read_inventory", failing)
    nvml.read_ahead()
    with pytest.raises(RuntimeError, match="Not Found"):
        nvml.inventory()


def test_a_create_about_to_exec_waits_for_the_read_begun_ahead(monkeypatch):
    """A cold start execs the real runtime: NVML must not be left half started on another thread."""
    import functools
    import time
    done: list[str] = []

    @functools.cache
    def slow_read() -> nvml.Inventory:
        time.sleep(0.2)
        done.append("NVML read")
        return TWO_H100

    monkeypatch.setattr(nvml, "_read_inventory", slow_read)
    nvml.read_ahead()
    nvml.settle()
    assert done == ["NVML read"]
