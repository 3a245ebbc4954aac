"""A serving engine's process tree through rewarm-runc, with the engine preset `rewarm.dev/engine:
vllm`: the stand-in of tests/system/workers/engine_tree has vLLM's shape (an API server on uvloop,
an engine core started with `spawn`, multiprocessing's resource tracker, ZMQ over ipc://, POSIX
shared memory, a thread of the engine's own) and vLLM's dev endpoints for its sleep mode. The real
vLLM runs on the GPU node (benchmarks/serving.py); CI has no GPU.

Every process of the tree comes back, answering with the captured warm state, twice from one
snapshot; sleep level 2 reads the weights back from the model files; a broken engine, or one that
cannot answer its preset, ends in a cold start with the reason, and nothing is left behind."""
from __future__ import annotations

import json
import os
import sys

import pytest

from helpers import config_named, events, rewarm_cli, spec_of, stray_processes
from runtime.host import settings_file
from runtime.engine import capture
from runtime.lab.private_node import write_config
from runtime.model.errors import CaptureFailed

HERE = os.path.dirname(os.path.abspath(__file__))
APP = os.path.join(HERE, "workers", "engine_tree")
sys.path.insert(0, APP)
import engine_site  # noqa: E402  (the stand-in's packages: packaging/setup.sh installs them)

PORT = 8000
PROMPT = {"prompt": "The fastest way to start an inference worker is"}
VLLM = {"rewarm.dev/engine": "vllm"}                     # sleep level 2, the default
VLLM_LEVEL1 = {**VLLM, "rewarm.dev/sleep-level": "1"}


@pytest.fixture
def model(tmp_path):
    """The engine's "weights": the files of --model DIR, bound into its containers at /models."""
    d = tmp_path / "model"
    d.mkdir()
    os.chmod(tmp_path, 0o755)
    (d / "model-00001.bin").write_bytes(os.urandom(24 << 20))
    (d / "config.json").write_text("{}")
    return d


@pytest.fixture
def engine_lab(lab):
    lab.port = PORT
    return lab


def engine(lab, model, name: str, annotations: dict[str, str], sleep_mode: bool = True, dev_mode: bool = True):
    site = engine_site.ensure()
    args = ["/usr/bin/python3", "/app/server.py", "--model", "/models", "--port", str(PORT)]
    w = lab.worker({"rewarm.dev/snapshot": name, **annotations},
                   env={"PYTHONPATH": "/opt/engine-site", "VLLM_SERVER_DEV_MODE": "1" if dev_mode else "0",
                        "WARM_SECONDS": "2", "KV_MB": "64"},
                   args=args + (["--enable-sleep-mode"] if sleep_mode else []), app_dir=APP)
    w.binds.update({"/opt/engine-site": site, "/models": str(model)})
    return w


def tree(c) -> list[str]:
    """The container's processes, by their command lines."""
    pids = json.loads(c.runtime_cmd("ps", "--format", "json", c.cid).stdout or "[]")
    out = []
    for pid in pids:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            out.append(f.read().replace(b"\0", b" ").decode().strip())
    return sorted(out)


def facts(c) -> dict:
    answer = c.get("/")
    answer["tokens"] = c.post("/v1/completions", PROMPT)["choices"][0]["token_ids"]
    return answer


def test_an_engine_tree_comes_back_whole_twice_from_one_snapshot(engine_lab, node, model):
    source = engine_lab.create("engine-src", engine(engine_lab, model, "engine", VLLM_LEVEL1))
    source.wait_ready(path="/health")
    seccomp = spec_of(source)["linux"]["seccomp"]
    assert {"names": ["io_uring_setup", "io_uring_enter", "io_uring_register"], "action": "SCMP_ACT_ERRNO",
            "errnoRet": 38} in seccomp["syscalls"]
    before, processes = facts(source), tree(source)
    assert before["io_uring"] == 0 and len(processes) == 3    # API server, engine core, resource tracker
    assert any("resource_tracker" in p for p in processes) and any("spawn_main" in p for p in processes)

    entry = capture.capture(node, engine_lab.runc_root, source.cid, "engine", leave_running=True)
    after = facts(source)     # the source slept for the capture and was woken: it serves on
    assert after["calls"] == ["POST /sleep?level=1", "POST /wake_up"] and after["tokens"] == before["tokens"]
    assert entry.manifest.reload_files == ()    # sleep level 1: the weights travel in the snapshot
    source.runtime_cmd("delete", "--force", source.cid)

    for i in (1, 2):
        c = engine_lab.create(f"engine-{i}", engine(engine_lab, model, "engine", VLLM_LEVEL1))
        assert c.create_rc == 0, c.runtime_log()
        assert events(node, "restored")[-1]["container"] == c.cid
        restored = facts(c)
        assert restored["boot_id"] == before["boot_id"] and restored["tokens"] == before["tokens"]
        assert restored["engine"]["engine_pid"] == before["engine"]["engine_pid"]      # the same engine core
        assert restored["engine"]["steps"] > before["engine"]["steps"]                 # its thread runs on
        assert restored["calls"] == ["POST /sleep?level=1", "POST /wake_up"]   # captured asleep, woken by rewarm
        assert tree(c) == processes and restored["sleeping"] is False
        assert stray_processes(c) == []
        c.destroy()
        engine_lab.containers.remove(c)


def test_sleep_level_2_reads_the_weights_back_from_the_model_the_command_line_names(engine_lab, node, model):
    level2 = VLLM   # the default level
    source = engine_lab.create("engine2-src", engine(engine_lab, model, "engine2", level2))
    source.wait_ready(path="/health")
    before = facts(source)
    entry = capture.capture(node, engine_lab.runc_root, source.cid, "engine2", leave_running=False)
    assert {f.path: f.size for f in entry.manifest.reload_files} == {"/models/model-00001.bin": 24 << 20,
                                                                     "/models/config.json": 2}
    c = engine_lab.create("engine2", engine(engine_lab, model, "engine2", level2))
    restored = facts(c)
    assert restored["boot_id"] == before["boot_id"] and restored["tokens"] == before["tokens"]
    assert restored["calls"] == ["POST /sleep?level=2", "POST /wake_up?tags=weights", "POST /collective_rpc",
                                 "POST /wake_up?tags=kv_cache"]
    assert "--load-format instanttensor" in events(node, "captured")[-1]["advice"]   # vLLM's default loader
    speed = [c for c in json.loads(rewarm_cli("doctor", "--json").stdout) if c["check"] == "snapshot default/engine2 speed"]
    assert speed and speed[0]["status"] == "WARN" and "INSTANTTENSOR_BACKEND=MMAP" in speed[0]["detail"]
    stages = events(node, "restored")[-1]["stages"]   # each call of the wake-up timed alone
    assert {"resume /wake_up?tags=weights", "resume /collective_rpc", "resume /wake_up?tags=kv_cache"} <= set(stages)
    assert sum(v for k, v in stages.items() if k.startswith("resume /")) <= stages["resume"]


def test_weights_resident_keeps_the_weights_in_the_snapshot_and_wakes_only_the_kv_cache(engine_lab, node, model):
    resident = {**VLLM, "rewarm.dev/sleep-level": "weights-resident"}
    source = engine_lab.create("engine6-src", engine(engine_lab, model, "engine6", resident))
    source.wait_ready(path="/health")
    before = facts(source)
    entry = capture.capture(node, engine_lab.runc_root, source.cid, "engine6", leave_running=True)
    assert entry.manifest.reload_files == ()   # nothing is read back
    after = facts(source)   # captured with the weights reloaded and the KV cache freed, then woken
    assert after["calls"] == ["POST /sleep?level=2", "POST /wake_up?tags=weights", "POST /collective_rpc",
                              "POST /wake_up?tags=kv_cache"] and after["tokens"] == before["tokens"]
    source.runtime_cmd("delete", "--force", source.cid)
    (model / "model-00001.bin").write_bytes(b"")   # the weights are in the snapshot, not in these files
    c = engine_lab.create("engine6", engine(engine_lab, model, "engine6", resident))
    assert events(node, "restored")[-1]["container"] == c.cid
    restored = facts(c)
    assert restored["boot_id"] == before["boot_id"] and restored["tokens"] == before["tokens"]
    assert restored["calls"][-1] == "POST /wake_up?tags=kv_cache" and restored["sleeping"] is False


def test_an_engine_that_fails_its_wake_after_a_restore_cold_starts_and_leaves_nothing(engine_lab, node, model):
    source = engine_lab.create("engine3-src", engine(engine_lab, model, "engine3", VLLM))
    source.wait_ready(path="/health")
    before = facts(source)
    capture.capture(node, engine_lab.runc_root, source.cid, "engine3", leave_running=False)
    (model / "fail-wake").write_text("")
    c = engine_lab.create("engine3", engine(engine_lab, model, "engine3", VLLM))
    assert c.create_rc == 0
    reason = events(node, "cold-start")[-1]["reason"]
    assert "resume hook POST http://127.0.0.1:8000/wake_up?tags=weights (call 1 of 3) failed (HTTP 500" in reason, reason
    assert "--enable-sleep-mode and VLLM_SERVER_DEV_MODE=1" in reason     # what vLLM needs to answer it
    os.unlink(model / "fail-wake")
    fresh, _ = c.wait_ready(path="/")
    assert fresh["boot_id"] != before["boot_id"] and len(tree(c)) == 3 and stray_processes(c) == []


@pytest.mark.parametrize("sleep_mode, dev_mode, lacks", [
    (False, True, "needs --enable-sleep-mode on the engine's command line"),
    (True, False, "needs VLLM_SERVER_DEV_MODE=1 in the container's environment"),
])
def test_an_engine_that_cannot_answer_its_preset_cold_starts_with_what_it_lacks(engine_lab, node, model, sleep_mode,
                                                                                dev_mode, lacks):
    c = engine_lab.create("engine4", engine(engine_lab, model, "engine4", VLLM, sleep_mode, dev_mode))
    c.wait_ready(path="/health")
    event = events(node)[-1]
    assert event["event"] == "cold-start" and event["container"] == c.cid and lacks in event["reason"]
    with pytest.raises(CaptureFailed, match=lacks):   # nor can it be captured by hand
        capture.capture(node, engine_lab.runc_root, c.cid, "engine4", leave_running=True)
    assert c.get("/health") == {"ready": True}


def test_with_the_io_uring_block_off_the_capture_names_the_process_that_holds_a_ring(engine_lab, model, tmp_path):
    top = tmp_path / "node"
    top.mkdir()
    path = write_config(str(top), block_io_uring=False)
    with config_named(path):
        settings = settings_file.load(path)
        source = engine_lab.create("engine5", engine(engine_lab, model, "engine5", VLLM))
        source.wait_ready(path="/health")
        assert "seccomp" not in spec_of(source)["linux"] and source.get("/")["io_uring"] == 1
        with pytest.raises(CaptureFailed, match=r"process \d+ \(python3\) holds an io_uring instance"):
            capture.capture(settings, engine_lab.runc_root, source.cid, "engine5", leave_running=True)
        assert source.get("/")["calls"] == []   # refused before the worker was put to sleep
