"""The realistic worker (examples/llm-worker: transformers, safetensors, OpenAI-compatible API),
tiny size, on the CPU: a restored copy answers completions with the captured worker's state."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest

from runtime.engine import capture
from runtime.lab.runc_lab import CHECKOUT

WORKER = os.path.join(CHECKOUT, "examples", "llm-worker")
sys.path.insert(0, WORKER)
import deps  # noqa: E402

PORT = 8000
PROMPT = {"prompt": "Restore beats a cold start because", "max_tokens": 12}
BATCH = {"prompt": ["a warm worker", PROMPT["prompt"], "x"], "max_tokens": 12}   # decoded as one batch
ANNOTATIONS = {"rewarm.dev/snapshot": "llm-tiny", "rewarm.dev/quiesce-http": f"http://127.0.0.1:{PORT}/sleep",
               "rewarm.dev/resume-http": f"http://127.0.0.1:{PORT}/wake_up"}


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    site = deps.ensure()
    path = str(tmp_path_factory.mktemp("models") / "tiny")
    subprocess.run([deps.WORKER_PYTHON, os.path.join(WORKER, "make_weights.py"), path, "--size", "tiny"], check=True,
                   env={**os.environ, "PYTHONPATH": site}, capture_output=True)
    return path


def llm_worker(lab, model_dir):  # type: ignore[no-untyped-def]
    w = lab.worker(ANNOTATIONS, env={"PYTHONPATH": "/opt/torch", "MODEL_DIR": "/models/llm", "PORT": str(PORT),
                                     "HF_HUB_OFFLINE": "1"},
                   args=[deps.WORKER_PYTHON, "/app/server.py"], app_dir=WORKER)
    w.binds.update({"/opt/torch": deps.SITE, "/models/llm": model_dir})
    return w


def test_restored_llm_worker_completes_like_the_captured_one(node, tmp_path, model_dir):
    from runtime.lab.runc_lab import Lab
    directory = str(tmp_path / "lab")
    os.makedirs(directory)
    os.chmod(directory, 0o755)
    lab = Lab(directory, port=PORT)
    try:
        cold = lab.create("cold", llm_worker(lab, model_dir))
        health, _ = cold.wait_ready(timeout=300, path="/health")
        assert health["stages"]["load"] > 0 and health["params"] > 10_000_000
        first = cold.post("/v1/completions", PROMPT)
        assert first["object"] == "text_completion" and len(first["choices"][0]["token_ids"]) == 12
        batch = cold.post("/v1/completions", BATCH)
        assert len(batch["choices"]) == 3 and batch["choices"][1]["token_ids"] == first["choices"][0]["token_ids"]
        entry = capture.capture(node, lab.runc_root, cold.cid, "llm-tiny", leave_running=True)
        assert cold.post("/v1/completions", PROMPT)["choices"] == first["choices"]   # resumed, still serving
        restored = lab.create("restored", llm_worker(lab, model_dir))
        again = restored.get("/health")     # one try: a restored worker is already listening
        assert again is not None, restored.text()[-2000:]
        assert again["boot_id"] == health["boot_id"] and again["stages"] == health["stages"]  # no new start
        answer = restored.post("/v1/completions", PROMPT)
        assert answer["system_fingerprint"] == first["system_fingerprint"]
        assert answer["choices"][0]["token_ids"] == first["choices"][0]["token_ids"]     # same weights, same greedy path
        assert [c["token_ids"] for c in restored.post("/v1/completions", BATCH)["choices"]] == \
            [c["token_ids"] for c in batch["choices"]]
        assert "restored" in restored.runtime_log() and entry.manifest.capture.checkpoint_bytes > 0
    finally:
        lab.close()
