"""A CPU inference worker that starts the way real ones do: import torch, build a decoder-style
model, load its weights from local disk (written once on first start), warm it up with a few
generations, then serve greedy completions over HTTP. Ready file and boot id as in warm-worker.

Env: PORT (8080), LAYERS (6), D_MODEL (512), VOCAB (32000), COMPILE (0: set 1 for torch.compile),
WEIGHTS (/var/cache/model/weights.pt), READY_FILE (/run/thaw/ready).
"""
import http.server
import json
import os
import time
import uuid

START = time.time()
import torch  # noqa: E402  (the import itself is part of a worker's start)
from torch import nn  # noqa: E402

BOOT_ID = uuid.uuid4().hex
torch.set_num_threads(int(os.environ.get("THREADS", "2")))
D, LAYERS, VOCAB = int(os.environ.get("D_MODEL", "512")), int(os.environ.get("LAYERS", "6")), int(os.environ.get("VOCAB", "32000"))
WEIGHTS = os.environ.get("WEIGHTS", "/var/cache/model/weights.pt")


class Decoder(nn.Module):
    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(VOCAB, D)
        layer = nn.TransformerEncoderLayer(D, nhead=8, dim_feedforward=4 * D, batch_first=True, norm_first=True)
        self.blocks = nn.TransformerEncoder(layer, LAYERS)
        self.head = nn.Linear(D, VOCAB, bias=False)

    def forward(self, ids):
        n = ids.shape[1]
        mask = torch.triu(torch.full((n, n), float("-inf")), diagonal=1)
        return self.head(self.blocks(self.embed(ids), mask=mask, is_causal=True))


def load_model():
    model = Decoder().eval()
    if not os.path.exists(WEIGHTS):  # first start on this rootfs: "download" = write seeded weights
        torch.manual_seed(0)
        os.makedirs(os.path.dirname(WEIGHTS), exist_ok=True)
        torch.save(Decoder().state_dict(), WEIGHTS)
    model.load_state_dict(torch.load(WEIGHTS, map_location="cpu"))
    return torch.compile(model) if os.environ.get("COMPILE") == "1" else model


@torch.no_grad()
def generate(model, prompt, steps=16):
    ids = torch.tensor([prompt], dtype=torch.long)
    for _ in range(steps):
        nxt = model(ids)[0, -1].argmax()
        ids = torch.cat([ids, nxt.view(1, 1)], dim=1)
    return ids[0, len(prompt):].tolist()


MODEL = load_model()
for _ in range(3):  # warm-up: first runs allocate, pick kernels, fill caches
    generate(MODEL, list(range(1, 33)))
PARAMS = sum(p.numel() for p in MODEL.parameters())


class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        t = time.time()
        tokens = generate(MODEL, [int(x) % VOCAB for x in (self.path.strip("/?") or "1,2,3,4").split(",") if x.isdigit()] or [1])
        body = json.dumps({"boot_id": BOOT_ID, "tokens": tokens, "params": PARAMS,
                           "warm_seconds": round(READY_AT - START, 2), "generate_seconds": round(time.time() - t, 3)})
        print(f"served {self.path} -> {tokens[:4]}...", flush=True)
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body.encode())

    def log_message(self, *args):
        pass


server = http.server.HTTPServer(("0.0.0.0", int(os.environ.get("PORT", "8080"))), Handler)
READY_AT = time.time()
os.makedirs(os.path.dirname(os.environ.get("READY_FILE", "/run/thaw/ready")), exist_ok=True)
open(os.environ.get("READY_FILE", "/run/thaw/ready"), "w").close()
print(f"torch worker ready after {READY_AT - START:.1f}s ({PARAMS / 1e6:.0f}M params), boot id {BOOT_ID}", flush=True)
server.serve_forever()
