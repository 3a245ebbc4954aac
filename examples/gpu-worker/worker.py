"""A GPU worker with the state that makes restore worth it: GPU_GIB of weights made on the GPU,
a CUDA graph captured over them, and an HTTP endpoint. Each answer carries checksums of the
weights and of a graph replay, so a restored copy can be compared bit for bit with the original.

Env: GPU_GIB (10), PORT (8080), READY_FILE (/run/rewarm/ready).
"""
import hashlib
import http.server
import json
import os
import time
import uuid

START = time.time()
import torch  # noqa: E402

BOOT_ID = uuid.uuid4().hex
DEV = torch.device("cuda")
GIB = float(os.environ.get("GPU_GIB", "10"))
torch.manual_seed(1234)
CHUNK = 1 << 28  # 256 Mi floats of bf16 = 512 MiB per tensor
WEIGHTS = [torch.randn(CHUNK, dtype=torch.bfloat16, device=DEV) for _ in range(max(1, int(GIB * 2)))]
W = torch.randn(4096, 4096, dtype=torch.bfloat16, device=DEV)
X = torch.randn(64, 4096, dtype=torch.bfloat16, device=DEV)
STREAM = torch.cuda.Stream()
with torch.cuda.stream(STREAM):
    for _ in range(3):
        Y = torch.relu(X @ W) @ W.T  # warm-up before capture
torch.cuda.synchronize()
GRAPH = torch.cuda.CUDAGraph()
with torch.cuda.graph(GRAPH):
    Y = torch.relu(X @ W) @ W.T
torch.cuda.synchronize()


def digest(t: torch.Tensor) -> str:
    """Every element counts (an integer sum of the raw bits) plus a strided sample of the bytes."""
    bits = t.reshape(-1).view(torch.int16)
    total = int(bits.sum(dtype=torch.int64).item())
    sample = bits[::1009].cpu().numpy().tobytes()
    return hashlib.sha256(str(total).encode() + sample).hexdigest()[:16]


def answer() -> dict:
    GRAPH.replay()
    torch.cuda.synchronize()
    return {"boot_id": BOOT_ID, "weights": [digest(w) for w in WEIGHTS[:4]] + [digest(WEIGHTS[-1])],
            "graph_out": digest(Y), "gpu_bytes": torch.cuda.memory_allocated(), "ready_s": round(READY_AT - START, 2)}


class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        body = json.dumps(answer())
        print(f"served {self.path}", flush=True)
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body.encode())

    def log_message(self, *args):
        pass


server = http.server.HTTPServer(("0.0.0.0", int(os.environ.get("PORT", "8080"))), Handler)
READY_AT = time.time()
os.makedirs(os.path.dirname(os.environ.get("READY_FILE", "/run/rewarm/ready")), exist_ok=True)
open(os.environ.get("READY_FILE", "/run/rewarm/ready"), "w").close()
print(f"gpu worker ready after {READY_AT - START:.1f}s, {torch.cuda.memory_allocated() / 2**30:.1f} GiB, boot id {BOOT_ID}", flush=True)
server.serve_forever()
