"""A worker whose memory is hard to restore right, for the parallel-fill tests: over 1 GiB of
os.urandom content in many kinds of private and shared mappings, spread over a parent, two forked
children (COW-shared pages, some rewritten) and threads. GET / answers with a digest of each
process's memory, taken in that process, and the huge-page state of the two advised regions
(a few seconds: GET /health answers at once).

Env: PORT (8080), BIG_MB (640), SMALL (300), READY_FILE (/run/rewarm/ready).
"""
import ctypes
import hashlib
import http.server
import json
import mmap
import os
import threading
import time

MB = 1 << 20
HUGE = 2 * MB
PORT = int(os.environ.get("PORT", "8080"))
BIG_MB = int(os.environ.get("BIG_MB", "640"))
SMALL = int(os.environ.get("SMALL", "300"))


def filled(size, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS, advice=None):
    m = mmap.mmap(-1, size, flags=flags)
    if advice is not None:
        m.madvise(advice)
    for off in range(0, size, 16 * MB):
        n = min(16 * MB, size - off)
        m[off:off + n] = os.urandom(n)
    return m


regions = {
    "big": filled(BIG_MB * MB),
    "thp": filled(128 * MB, advice=mmap.MADV_HUGEPAGE),
    "nohuge": filled(64 * MB, advice=mmap.MADV_NOHUGEPAGE),
    "shared": filled(64 * MB, flags=mmap.MAP_SHARED | mmap.MAP_ANONYMOUS),
}
smalls = [filled(64 * 1024 + 4096 * (i % 7)) for i in range(SMALL)]
with open("/dev/shm/backing", "wb") as f:                    # a tmpfs file, mapped private and dirtied
    f.write(os.urandom(32 * MB))
with open("/dev/shm/backing", "r+b") as f:
    regions["file_private"] = mmap.mmap(f.fileno(), 32 * MB, flags=mmap.MAP_PRIVATE)
for off in range(0, 32 * MB, 2 * 4096):
    regions["file_private"][off:off + 8] = os.urandom(8)


def digest():
    h = hashlib.sha256()
    for name in sorted(regions):
        h.update(regions[name][:])
    for m in smalls:
        h.update(m[:])
    return h.hexdigest()


def huge_kb(m):
    """AnonHugePages of the mapping (smaps), to see the advice kept."""
    start = ctypes.addressof(ctypes.c_char.from_buffer(m))
    with open("/proc/self/smaps") as f:
        inside = False
        for line in f:
            if "-" in line.split()[0] and len(line.split()) > 4:
                lo, hi = (int(x, 16) for x in line.split()[0].split("-"))
                inside = lo <= start < hi
            elif inside and line.startswith("AnonHugePages:"):
                return int(line.split()[1])
    return -1


children = []
for k in range(2):                   # forked after the fill: COW-shared pages, some rewritten below
    parent_end, child_end = os.pipe(), os.pipe()
    pid = os.fork()
    if pid == 0:
        for off in range(k * MB, 32 * MB, 3 * MB):           # this child's own versions of some pages
            regions["big"][off:off + 4096] = os.urandom(4096)
        regions["shared"][k * MB:k * MB + 4096] = os.urandom(4096)   # seen by everyone (MAP_SHARED)
        threading.Thread(target=lambda: time.sleep(1 << 30), daemon=True).start()
        while True:
            if os.read(parent_end[0], 1) != b"d":
                os._exit(0)
            os.write(child_end[1], digest().encode())
    children.append((pid, parent_end[1], child_end[0]))
for _ in range(2):
    threading.Thread(target=lambda: time.sleep(1 << 30), daemon=True).start()
lock = threading.Lock()


class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        if self.path == "/health":
            self._send(b'{"ok": true}')
            return
        with lock:
            mine = digest()
            theirs = []
            for _, ask, answer in children:
                os.write(ask, b"d")
                theirs.append(os.read(answer, 64).decode())
        body = json.dumps({"parent": mine, "children": theirs, "threads": threading.active_count(),
                           "huge_kb": {"thp": huge_kb(regions["thp"]), "nohuge": huge_kb(regions["nohuge"])},
                           "pids": [os.getpid(), *(c[0] for c in children)]}).encode()
        self._send(body)

    def _send(self, body):
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


server = http.server.ThreadingHTTPServer(("127.0.0.1", PORT), Handler)
ready = os.environ.get("READY_FILE", "/run/rewarm/ready")
os.makedirs(os.path.dirname(ready), exist_ok=True)
open(ready, "w").close()
print("memworker ready", flush=True)
server.serve_forever()
