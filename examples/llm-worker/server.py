"""llm-worker: an OpenAI-compatible completions server that starts the way real inference workers
do: import torch and transformers, load a Llama-architecture model from safetensors on local disk,
move it to the device, reserve GPU memory for a KV cache (as vLLM does), optionally compile, and
warm up with generations. Then it writes rewarm's ready file and serves.

  POST /v1/completions  {"prompt": str, "max_tokens": int}  greedy; OpenAI's response shape, with
                        the boot id as system_fingerprint (a restored copy keeps its source's)
  GET  /health          status, boot id, the start's stages in seconds
  POST /sleep           quiesce for a capture: free the KV reserve and cached allocator blocks
  POST /wake_up         take the KV reserve again (after a capture, or in a restored copy)

Env: MODEL_DIR (/models/llm), DEVICE (cuda if available, else cpu), COMPILE (0; 1 = torch.compile),
KV_CACHE_GB (0), PORT (8000), READY_FILE (/run/rewarm/ready), THREADS (CPU threads).
The tokenizer is bytes (id = byte + 3): the weights are random, so only speed and state matter.
"""
import ctypes
import gc
import http.server
import json
import os
import signal
import sys
import time
import uuid

START = time.time()
STAGES = {}
# torch.compile in this process by default, not in a pool of compile workers that would be captured
# too (set TORCHINDUCTOR_COMPILE_THREADS to compile in parallel)
os.environ.setdefault("TORCHINDUCTOR_COMPILE_THREADS", "1")
import torch  # noqa: E402  (imports are part of a worker's start)
import transformers  # noqa: E402
STAGES["import"] = round(time.time() - START, 2)

BOOT_ID = uuid.uuid4().hex
MODEL_DIR = os.environ.get("MODEL_DIR", "/models/llm")
DEVICE = os.environ.get("DEVICE") or ("cuda" if torch.cuda.is_available() else "cpu")
DTYPE = torch.bfloat16 if DEVICE.startswith("cuda") else torch.float32
KV_CACHE_GB = float(os.environ.get("KV_CACHE_GB", "0"))
if os.environ.get("THREADS"):
    torch.set_num_threads(int(os.environ["THREADS"]))


def timed(name):
    def wrap(fn):
        def run(*args):
            t = time.time()
            result = fn(*args)
            if DEVICE.startswith("cuda"):
                torch.cuda.synchronize()
            STAGES[name] = round(time.time() - t, 2)
            return result
        return run
    return wrap


@timed("load")
def load_model():
    kwargs = {"low_cpu_mem_usage": True}
    try:
        model = transformers.AutoModelForCausalLM.from_pretrained(MODEL_DIR, dtype=DTYPE, **kwargs)
    except TypeError:  # transformers < 4.56 names it torch_dtype
        model = transformers.AutoModelForCausalLM.from_pretrained(MODEL_DIR, torch_dtype=DTYPE, **kwargs)
    return model.to(DEVICE).eval()


class KvReserve:
    """GPU memory held for the KV cache, the way vLLM reserves it up front."""
    def __init__(self, gib):
        self.gib, self.block = gib, None

    def take(self):
        if self.gib and self.block is None and DEVICE.startswith("cuda"):
            self.block = torch.empty(int(self.gib * 2**30), dtype=torch.uint8, device=DEVICE)

    def release(self):
        self.block = None


@timed("compile")
def compile_model(model):
    if os.environ.get("COMPILE") != "1":
        return model, False
    try:
        model.forward = torch.compile(model.forward, dynamic=True)
        generate(model, "compile", 4)
        return model, True
    except Exception as e:  # a worker that cannot compile still serves, eagerly
        print(f"torch.compile unavailable ({type(e).__name__}: {e}); serving eagerly", flush=True)
        model.forward = model.forward.__wrapped__ if hasattr(model.forward, "__wrapped__") else model.forward
        return model, False


@torch.inference_mode()
def generate(model, prompt, max_tokens):
    ids = torch.tensor([[b + 3 for b in prompt.encode()[-512:]] or [3]], device=DEVICE)
    out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_tokens, do_sample=False,
                         pad_token_id=0)
    return out[0, ids.shape[1]:].tolist()


@timed("warmup")
def warm_up(model):
    for n in (8, 32, 64):
        generate(model, "warm up " * n, 8)


def quiesce():
    """Give back what a capture should not carry: the KV reserve, cached GPU blocks, free heap."""
    KV.release()
    gc.collect()
    if DEVICE.startswith("cuda"):
        torch.cuda.empty_cache()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except OSError:
        pass


MODEL = load_model()
KV = KvReserve(KV_CACHE_GB)
t = time.time()
KV.take()
STAGES["kv_reserve"] = round(time.time() - t, 2)
MODEL, COMPILED = compile_model(MODEL)
warm_up(MODEL)
PARAMS = sum(p.numel() for p in MODEL.parameters())


class Handler(http.server.BaseHTTPRequestHandler):
    def _send(self, code, payload):
        body = json.dumps(payload).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self):
        if self.path.startswith("/health"):
            self._send(200, {"status": "ok", "boot_id": BOOT_ID, "ready_seconds": READY_SECONDS, "stages": STAGES,
                             "device": DEVICE, "params": PARAMS, "compiled": COMPILED,
                             "kv_reserved_gb": KV.gib if KV.block is not None else 0})
        else:
            self._send(404, {"error": "not found"})

    def do_POST(self):
        length = int(self.headers.get("Content-Length") or 0)
        request = json.loads(self.rfile.read(length) or b"{}")
        if self.path == "/v1/completions":
            t = time.time()
            tokens = generate(MODEL, str(request.get("prompt", "")), int(request.get("max_tokens", 16)))
            print(f"completion of {len(tokens)} tokens in {time.time() - t:.3f}s", flush=True)
            self._send(200, {"id": f"cmpl-{uuid.uuid4().hex[:12]}", "object": "text_completion",
                             "created": int(time.time()), "model": MODEL_DIR, "system_fingerprint": BOOT_ID,
                             "choices": [{"index": 0, "text": bytes((i - 3) % 256 for i in tokens).decode("latin-1"),
                                          "token_ids": tokens, "finish_reason": "length", "logprobs": None}],
                             "usage": {"prompt_tokens": len(str(request.get("prompt", "")).encode()),
                                       "completion_tokens": len(tokens)}})
        elif self.path == "/sleep":
            quiesce()
            self._send(200, {"sleeping": True})
        elif self.path == "/wake_up":
            KV.take()
            self._send(200, {"sleeping": False})
        else:
            self._send(404, {"error": "not found"})

    def log_message(self, *args):
        pass


signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))  # as PID 1 of its container, no default action
quiesce()   # the start's garbage (loader buffers, warm-up activations) is not part of the warm state
KV.take()
server = http.server.ThreadingHTTPServer(("0.0.0.0", int(os.environ.get("PORT", "8000"))), Handler)
READY_SECONDS = round(time.time() - START, 2)
ready_file = os.environ.get("READY_FILE", "/run/rewarm/ready")
os.makedirs(os.path.dirname(ready_file), exist_ok=True)
open(ready_file, "w").close()
print(f"llm-worker ready after {READY_SECONDS}s on {DEVICE} ({PARAMS / 1e9:.2f}B params, stages {STAGES}), "
      f"boot id {BOOT_ID}", flush=True)
server.serve_forever()
