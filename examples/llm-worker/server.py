"""llm-worker: an OpenAI-compatible completions server that starts the way real inference workers
do: import torch and transformers, load a Llama-architecture model from safetensors on local disk,
move it to the device, reserve GPU memory (as vLLM does), allocate a static KV cache and capture a
CUDA graph of the decode step for each batch size (as vLLM does), and warm up. Then it writes
rewarm's ready file and serves, decoding through the captured graphs (decoder.py).

  POST /v1/completions  {"prompt": str or [str, ...], "max_tokens": int}  greedy; OpenAI's response
                        shape, with the boot id as system_fingerprint (a restored copy keeps its
                        source's) and the request's own timing (prefill, decode)
  GET  /health          status, boot id, the start's stages in seconds
  POST /sleep           quiesce for a capture: free the memory reserve and cached allocator blocks,
                        and on a GPU give back the memory of the weights and the KV cache
                        (gpu_memory.py): the weights come back from the model files and the cache
                        is zeroed, so the checkpoint need carry neither
  POST /wake_up         read the weights back, map the KV cache and take the memory reserve again
                        (after a capture, or in a restored copy); fails (HTTP 500) if the model
                        files changed since (size or mtime). A worker put to sleep serves again
                        only after a wake: give it both hooks

Env: MODEL_DIR (/models/llm), DEVICE (cuda if available, else cpu), KV_CACHE_GB (0: the reserve),
MAX_BATCH (8), MAX_LEN (1024), GRAPH_SIZES (1,2,4,8), PORT (8000), READY_FILE (/run/rewarm/ready),
THREADS (CPU threads), SLEEP_WEIGHTS (release: the weights and the KV cache leave the GPU on /sleep;
keep: they stay and the checkpoint carries them), LOAD_THREADS (readers of a wake, default the CPUs
up to 16). The tokenizer is bytes (id = byte + 3): the weights are random, so only speed and state
matter.
"""
import ctypes
import gc
import http.server
import json
import os
import signal
import sys
import threading
import time
import uuid

START = time.time()
STAGES = {}
import torch  # noqa: E402  (imports are part of a worker's start)
import transformers  # noqa: E402
from decoder import StaticDecoder  # noqa: E402
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


@timed("movable")
def movable_weights(model):
    """On a GPU, the weights move into memory they can leave and come back to (gpu_memory.py)."""
    if not DEVICE.startswith("cuda") or os.environ.get("SLEEP_WEIGHTS", "release") != "release":
        return None
    import gpu_memory
    moved, why = gpu_memory.weights(model, MODEL_DIR)
    if moved is None:
        print(f"llm-worker: the weights stay in the checkpoint: {why}", flush=True)
    return moved


class KvCache:
    """The decoder's key and value caches; with movable weights, in memory that a sleep gives back."""
    def __init__(self):
        self.block = None

    def __call__(self, shape, dtype):
        if WEIGHTS is None:
            return tuple(torch.zeros(shape, dtype=dtype, device=DEVICE) for _ in range(2))
        import gpu_memory
        self.block, tensors = gpu_memory.zeroed([shape, shape], dtype, torch.device(DEVICE).index or 0)
        return tensors

    def release(self):
        if self.block is not None:
            self.block.unmap()

    def take(self):
        if self.block is not None and not self.block.mapped:
            self.block.map()
            self.block.bytes.zero_()


class KvReserve:
    """GPU memory held up front, the way vLLM reserves it for its KV cache (released for a capture)."""
    def __init__(self, gib):
        self.gib, self.block = gib, None

    def take(self):
        if self.gib and self.block is None and DEVICE.startswith("cuda"):
            self.block = torch.empty(int(self.gib * 2**30), dtype=torch.uint8, device=DEVICE)

    def release(self):
        self.block = None


@timed("graphs")
def capture_graphs(decoder):
    sizes = [int(b) for b in os.environ.get("GRAPH_SIZES", "1,2,4,8").split(",") if b.strip()]
    decoder.capture_graphs([b for b in sizes if b <= decoder.max_batch])


def encode(text):
    return [b + 3 for b in text.encode()] or [3]


def generate(prompts, max_tokens):
    return DECODER.generate([encode(p) for p in prompts], max_tokens)


@timed("warmup")
def warm_up():
    for n in (8, 32, 64):
        generate(["warm up " * n], 8)
    generate(["warm up"] * DECODER.max_batch, 8)


def quiesce(release_weights=False):
    """Give back what a capture should not carry: the KV reserve, cached GPU blocks, free heap, and
    (for a capture) the weights that the model files hold anyway and the KV cache."""
    RESERVE.release()
    if release_weights and WEIGHTS is not None:
        WEIGHTS.release()
        KV_CACHE.release()
    gc.collect()
    if DEVICE.startswith("cuda"):
        torch.cuda.empty_cache()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except OSError:
        pass


MODEL = load_model()
WEIGHTS = movable_weights(MODEL)
KV_CACHE = KvCache()
RESERVE = KvReserve(KV_CACHE_GB)
t = time.time()
RESERVE.take()
STAGES["kv_reserve"] = round(time.time() - t, 2)
DECODER = StaticDecoder(MODEL, int(os.environ.get("MAX_BATCH", "8")), int(os.environ.get("MAX_LEN", "1024")),
                       cache=KV_CACHE)
capture_graphs(DECODER)
warm_up()
PARAMS = sum(p.numel() for p in MODEL.parameters())
SERVED = {"requests": 0}
LOAD_THREADS = max(1, int(os.environ.get("LOAD_THREADS") or min(16, os.cpu_count() or 1)))
AWAKE = threading.Lock()   # held by a completion, or by a sleep until the wake that ends it
ASLEEP = threading.Event()
HOOK = threading.Lock()    # one sleep or wake at a time: a wake that comes early waits for its sleep


def wake_up():
    """Weights back from their files, the KV cache, then the memory reserve (a failure leaves the
    worker asleep)."""
    t = time.time()
    loaded = WEIGHTS.reload(LOAD_THREADS) if WEIGHTS is not None else {}
    KV_CACHE.take()
    RESERVE.take()
    return {"seconds": round(time.time() - t, 4), "weights": loaded}


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
            self._send(200, {"status": "ok", "sleeping": ASLEEP.is_set(), "boot_id": BOOT_ID,
                             "ready_seconds": READY_SECONDS, "stages": STAGES,
                             "device": DEVICE, "params": PARAMS, "cuda_graphs": sorted(DECODER.graphs),
                             "kv_reserved_gb": RESERVE.gib if RESERVE.block is not None else 0, **SERVED})
        else:
            self._send(404, {"error": "not found"})

    def do_POST(self):
        length = int(self.headers.get("Content-Length") or 0)
        request = json.loads(self.rfile.read(length) or b"{}")
        if self.path == "/v1/completions":
            t = time.time()
            prompt = request.get("prompt", "")
            prompts = [str(p) for p in prompt] if isinstance(prompt, list) else [str(prompt)]
            if not AWAKE.acquire(timeout=60):
                return self._send(503, {"error": "asleep for a capture, or busy"})
            try:
                outputs = generate(prompts, int(request.get("max_tokens", 16)))
            finally:
                AWAKE.release()
            seconds = round(time.time() - t, 4)
            SERVED["requests"] += 1
            print(f"completion of {len(prompts)} x {len(outputs[0])} tokens in {seconds:.3f}s", flush=True)
            self._send(200, {"id": f"cmpl-{uuid.uuid4().hex[:12]}", "object": "text_completion",
                             "created": int(time.time()), "model": MODEL_DIR, "system_fingerprint": BOOT_ID,
                             "choices": [{"index": n, "text": bytes((i - 3) % 256 for i in tokens).decode("latin-1"),
                                          "token_ids": tokens, "finish_reason": "length", "logprobs": None}
                                         for n, tokens in enumerate(outputs)],
                             "usage": {"prompt_tokens": sum(len(p.encode()) for p in prompts),
                                       "completion_tokens": sum(len(o) for o in outputs)},
                             "timing": {"seconds": seconds}})
        elif self.path == "/sleep":
            with HOOK:
                if not ASLEEP.is_set():
                    if not AWAKE.acquire(timeout=60):
                        return self._send(503, {"error": "a completion did not end"})
                    ASLEEP.set()
                quiesce(release_weights=True)   # rewarm warms the files named here with the snapshot
            self._send(200, {"sleeping": True, "reload_files": WEIGHTS.files() if WEIGHTS is not None else []})
        elif self.path == "/wake_up":
            with HOOK:
                if not ASLEEP.is_set():
                    return self._send(200, {"sleeping": False, "seconds": 0})
                try:
                    woke = wake_up()
                except Exception as e:  # noqa: BLE001  (the caller, rewarm, cold-starts the pod instead)
                    print(f"llm-worker: wake failed: {e}", flush=True)
                    return self._send(500, {"error": str(e)})
                ASLEEP.clear()
                AWAKE.release()
            print(f"llm-worker: awake in {woke['seconds']}s {json.dumps(woke['weights'])}", flush=True)
            self._send(200, {"sleeping": False, **woke})
        else:
            self._send(404, {"error": "not found"})

    def log_message(self, *args):
        pass


signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))  # as PID 1 of its container, no default action
quiesce()   # the start's garbage (loader buffers, warm-up activations) is not part of the warm state
RESERVE.take()
server = http.server.ThreadingHTTPServer(("0.0.0.0", int(os.environ.get("PORT", "8000"))), Handler)
READY_SECONDS = round(time.time() - START, 2)
ready_file = os.environ.get("READY_FILE", "/run/rewarm/ready")
os.makedirs(os.path.dirname(ready_file), exist_ok=True)
open(ready_file, "w").close()
print(f"llm-worker ready after {READY_SECONDS}s on {DEVICE} ({PARAMS / 1e9:.2f}B params, stages {STAGES}), "
      f"boot id {BOOT_ID}", flush=True)
server.serve_forever()
