"""A worker whose start is slow and whose warm state lives in memory: the smallest stand-in for an
inference server. It computes a table at start (WARM_SECONDS of CPU work), writes a cache file into
its rootfs, marks itself ready, and serves JSON over HTTP. Each answer shows the warm state and an
id drawn at start, so a restored copy is told apart from a fresh start.

Its quiesce hook (POST /sleep) drops a ballast of BALLAST_MB that stands in for a KV cache, and its
resume hook (POST /wake_up) takes it again. With BALLAST_FILE, the ballast is that file's content,
read again on wake, and /sleep names the file to rewarm, as a worker names the weights it reads
back.
"""
import http.server
import json
import os
import signal
import sys
import time
import uuid

START = time.time()
BOOT_ID = uuid.uuid4().hex
PORT = int(os.environ.get("PORT", "8080"))
READY_FILE = os.environ.get("READY_FILE", "/run/rewarm/ready")


def warm_up(seconds: float) -> dict:
    """Burn CPU building state the way weight loading and compilation do."""
    n, primes, deadline = 2, [], time.time() + seconds
    while time.time() < deadline:
        if all(n % p for p in primes[:200] if p * p <= n):
            primes.append(n)
        n += 1
    return {"primes": len(primes), "largest": primes[-1] if primes else 0}


STATE = warm_up(float(os.environ.get("WARM_SECONDS", "3")))
BALLAST_BYTES = int(os.environ.get("BALLAST_MB", "0")) << 20   # stands in for a KV cache
BALLAST_FILE = os.environ.get("BALLAST_FILE", "")             # or for weights read from disk


def ballast() -> bytearray:
    if BALLAST_FILE:
        with open(BALLAST_FILE, "rb") as f:
            return bytearray(f.read())
    return bytearray(b"w") * BALLAST_BYTES


BALLAST = ballast()
wakes = 0
os.makedirs("/var/cache/worker", exist_ok=True)
with open("/var/cache/worker/state.json", "w") as f:
    json.dump(STATE, f)
served = 0


class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        global served
        served += 1
        cache = open("/var/cache/worker/state.json").read()
        body = json.dumps({"boot_id": BOOT_ID, "state": STATE, "served": served, "pid": os.getpid(),
                           "cache_file": json.loads(cache), "warm_seconds": round(READY_AT - START, 2),
                           "ballast_bytes": len(BALLAST), "wakes": wakes})
        print(f"served request {served} for {self.path}", flush=True)
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body.encode())

    def do_POST(self):
        """Quiesce / resume hooks: drop the ballast before a capture, take it again after."""
        global BALLAST, wakes
        answer = b""
        if self.path == "/sleep":
            BALLAST = bytearray()
            answer = json.dumps({"reload_files": [BALLAST_FILE] if BALLAST_FILE else []}).encode()
        elif self.path == "/wake_up":
            BALLAST, wakes = ballast(), wakes + 1
        else:
            self.send_response(404)
            self.end_headers()
            return
        self.send_response(200)
        self.send_header("Content-Length", str(len(answer)))
        self.end_headers()
        self.wfile.write(answer)

    def log_message(self, *args):
        pass


signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))  # as PID 1 of its container, no default action
server = http.server.HTTPServer((os.environ.get("HOST", "0.0.0.0"), PORT), Handler)
READY_AT = time.time()
os.makedirs(os.path.dirname(READY_FILE), exist_ok=True)
open(READY_FILE, "w").close()
print(f"worker ready after {READY_AT - START:.1f}s, boot id {BOOT_ID}", flush=True)
server.serve_forever()
