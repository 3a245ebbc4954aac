"""A stand-in for a serving engine's process tree (vLLM's shape, no GPU), for the tests: what CRIU
meets in a real engine, without the engine.

- The API server (the container's init) runs uvicorn on uvloop, as vLLM's does; uvloop's libuv
  takes an io_uring instance for its epoll batching, which CRIU cannot checkpoint.
- The engine core is a second process started with multiprocessing's `spawn` (which also starts
  multiprocessing's resource tracker, a third process), named by setproctitle-style argv, talking
  to the API server over ZMQ on ipc:// sockets in /tmp.
- The engine's warm state lives in a POSIX shared-memory segment (/dev/shm) and a thread of its own
  steps in the background. Its weights are the files of --model DIR; its KV cache is a ballast.
- vLLM's sleep mode, as its dev endpoints offer it (with --enable-sleep-mode, VLLM_SERVER_DEV_MODE=1):
  POST /sleep?level=1 keeps the weights (vLLM moves them to host memory) and drops the KV cache;
  level=2 drops both; POST /wake_up[?tags=weights|kv_cache] takes them again (weights come back
  empty after level 2); POST /collective_rpc {"method": "reload_weights"} reads the model files
  again (HTTP 500 while DIR/fail-reload exists); GET /is_sleeping. A /wake_up answers HTTP 500
  while DIR/fail-wake exists (a test's broken engine).

GET /health: 200 once the engine is warm. POST /v1/completions: tokens that depend on the warm
state and the weights. GET /: the tree's facts and every hook call received, in order.
Args: --model DIR, --port N (8000), --enable-sleep-mode. Env: WARM_SECONDS (3), KV_MB (64).
"""
import asyncio
import hashlib
import json
import multiprocessing
import os
import sys
import threading
import time
import urllib.parse
import uuid

def flag(name: str, default: str | None = None) -> str | None:
    return sys.argv[sys.argv.index(name) + 1] if name in sys.argv else default


PORT = int(flag("--port", "8000") or 8000)
MODEL = flag("--model", "/models") or "/models"
SLEEP_MODE = "--enable-sleep-mode" in sys.argv
DEV_MODE = os.environ.get("VLLM_SERVER_DEV_MODE") == "1"


def read_weights(model: str) -> bytes:
    return b"".join(open(os.path.join(model, n), "rb").read() for n in sorted(os.listdir(model))
                    if n.endswith(".bin"))


# --- the engine core (its own process) ---------------------------------------------------------
def engine_main(requests_path: str, replies_path: str, shm_name: str, model: str) -> None:
    import zmq
    from multiprocessing import shared_memory
    state = shared_memory.SharedMemory(name=shm_name)   # created by the API server, filled here
    started = time.time()
    seed = uuid.uuid4().bytes
    block = hashlib.sha256(seed).digest() * (len(state.buf) // 32)
    state.buf[:len(block)] = block
    deadline = time.time() + float(os.environ.get("WARM_SECONDS", "3"))
    while time.time() < deadline:   # the slow start: weights, compilation
        hashlib.sha256(bytes(state.buf[:4096])).digest()
    kv_bytes = int(os.environ.get("KV_MB", "64")) << 20
    kv, weights = bytearray(kv_bytes), read_weights(model)
    steps = {"n": 0}

    def stepper() -> None:   # the engine's busy loop in a thread of its own
        while True:
            steps["n"] += 1
            time.sleep(0.01)

    threading.Thread(target=stepper, daemon=True).start()
    ctx = zmq.Context()
    inbox, outbox = ctx.socket(zmq.PULL), ctx.socket(zmq.PUSH)
    inbox.connect(requests_path)
    outbox.connect(replies_path)
    warm_s = time.time() - started
    outbox.send_json({"ready": True, "engine_pid": os.getpid(), "warm_s": warm_s})
    while True:
        req = inbox.recv_json()
        op, answer = req["op"], {"id": req["id"]}
        if op == "sleep" and req["level"] >= 1:   # level 0: no sleep mode, nothing freed
            kv = bytearray()
            if req["level"] == 2:
                weights = b""
        elif op == "wake_up":
            if "kv_cache" in req["tags"]:
                kv = bytearray(kv_bytes)
            if "weights" in req["tags"] and not weights:
                weights = bytes(len(read_weights(model)))   # allocated, not yet loaded
        elif op == "reload_weights":
            if os.path.exists(os.path.join(model, "fail-reload")):
                answer["error"] = "reload_weights failed"
            else:
                weights = read_weights(model)
        elif op == "complete":
            digest = hashlib.sha256(bytes(state.buf) + weights + req["prompt"].encode()).digest()
            answer["tokens"] = list(digest[:8])
        answer.update(kv_bytes=len(kv), weight_bytes=len(weights), steps=steps["n"], engine_pid=os.getpid())
        outbox.send_json(answer)


# --- the API server (the container's init) ----------------------------------------------------
class Engine:
    def __init__(self) -> None:
        import zmq
        import zmq.asyncio
        from multiprocessing import shared_memory
        base = f"ipc:///tmp/{uuid.uuid4()}"
        self.ctx = zmq.asyncio.Context()
        self.requests, self.replies = self.ctx.socket(zmq.PUSH), self.ctx.socket(zmq.PULL)
        self.requests.bind(base + "-in")
        self.replies.bind(base + "-out")
        self.shm = shared_memory.SharedMemory(create=True, size=8 << 20)
        mp = multiprocessing.get_context("spawn")
        self.proc = mp.Process(target=engine_main, args=(base + "-in", base + "-out", self.shm.name, MODEL),
                               name="EngineCore", daemon=True)
        self.proc.start()
        self.ready: dict | None = None
        self.sleeping = False
        self.calls: list[str] = []   # the hook calls received, in order
        self.lock = asyncio.Lock()
        self.next_id = 0

    async def call(self, op: str, **fields) -> dict:
        async with self.lock:   # one request at a time: replies come in order
            if self.ready is None:
                self.ready = await self.replies.recv_json()
            self.next_id += 1
            await self.requests.send_json({"op": op, "id": self.next_id, **fields})
            return await self.replies.recv_json()


ENGINE: Engine | None = None
BOOT_ID = uuid.uuid4().hex


async def app(scope, receive, send) -> None:
    if scope["type"] != "http":
        return
    body = b""
    while True:
        message = await receive()
        body += message.get("body", b"")
        if not message.get("more_body"):
            break
    status, answer = await route(scope["method"], scope["path"], scope.get("query_string", b"").decode(), body)
    data = json.dumps(answer).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(data)).encode())]})
    await send({"type": "http.response.body", "body": data})


async def route(method: str, path: str, query: str, body: bytes) -> tuple[int, dict]:
    assert ENGINE is not None
    if path == "/health":
        if ENGINE.ready is None:
            try:
                await asyncio.wait_for(ENGINE.call("ping"), 0.5)
            except asyncio.TimeoutError:
                return 503, {"ready": False}
        return 200, {"ready": True}
    if path == "/" and method == "GET":
        info = await ENGINE.call("ping")
        return 200, {"boot_id": BOOT_ID, "api_pid": os.getpid(), "engine": info, "warm": ENGINE.ready,
                     "sleeping": ENGINE.sleeping, "io_uring": _io_uring_fds(), "calls": ENGINE.calls}
    if path == "/v1/completions" and method == "POST":
        if ENGINE.sleeping:
            return 503, {"error": "the engine is sleeping"}
        prompt = json.loads(body or b"{}").get("prompt", "")
        reply = await ENGINE.call("complete", prompt=prompt)
        return 200, {"choices": [{"token_ids": reply["tokens"]}], "system_fingerprint": BOOT_ID}
    if path in ("/sleep", "/wake_up", "/is_sleeping", "/collective_rpc"):
        if not DEV_MODE:
            return 404, {"detail": "Not Found"}
        ENGINE.calls.append(f"{method} {path}" + (f"?{query}" if query else ""))
        return await dev_endpoint(method, path, urllib.parse.parse_qs(query), body)
    return 404, {"error": f"no route {method} {path}"}


async def dev_endpoint(method: str, path: str, query: dict, body: bytes) -> tuple[int, dict]:
    assert ENGINE is not None
    if path == "/is_sleeping":
        return 200, {"is_sleeping": ENGINE.sleeping}
    if method != "POST":
        return 405, {}
    if path == "/sleep":
        await ENGINE.call("sleep", level=int(query.get("level", ["1"])[0]) if SLEEP_MODE else 0)
        ENGINE.sleeping = True
        return 200, {}
    if path == "/wake_up":
        if os.path.exists(os.path.join(MODEL, "fail-wake")):
            return 500, {"error": "wake_up failed"}
        tags = query.get("tags", ["weights", "kv_cache"])
        reply = await ENGINE.call("wake_up", tags=tags)
        ENGINE.sleeping = not (reply["weight_bytes"] and reply["kv_bytes"])
        return 200, {}
    if json.loads(body or b"{}").get("method") != "reload_weights":
        return 400, {"detail": "unknown method"}
    reply = await ENGINE.call("reload_weights")
    return (500, {"error": reply["error"]}) if "error" in reply else (200, {"results": [None]})


def _io_uring_fds() -> int:
    n = 0
    for fd in os.listdir("/proc/self/fd"):
        try:
            n += os.readlink(f"/proc/self/fd/{fd}") == "anon_inode:[io_uring]"
        except OSError:
            pass
    return n


async def serve() -> None:
    global ENGINE
    import uvicorn
    ENGINE = Engine()
    server = uvicorn.Server(uvicorn.Config(app, host="0.0.0.0", port=PORT, loop="none", http="h11",
                                           lifespan="off", log_level="warning", access_log=False))
    print(f"engine-tree: API server {os.getpid()} on port {PORT}, engine core {ENGINE.proc.pid}", flush=True)
    await server.serve()


if __name__ == "__main__":
    import uvloop
    sys.argv[0] = "engine-tree-api-server"
    uvloop.run(serve())
