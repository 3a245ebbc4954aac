"""A worker that holds GIB GiB of private memory (random content, a 64 MiB block repeated) and
some hundreds of small mappings, and answers GET / with {"ok": true}: what the memory-restore
benchmark restores. Env: GIB (4), PORT (8080), READY_FILE (/run/rewarm/ready)."""
import http.server
import mmap
import os

MB = 1 << 20
size = int(float(os.environ.get("GIB", "4")) * 1024) * MB
block = os.urandom(64 * MB)
big = mmap.mmap(-1, size, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
for off in range(0, size, len(block)):
    big[off:off + min(len(block), size - off)] = block[:size - off]
smalls = []
for i in range(300):
    m = mmap.mmap(-1, 64 * 1024, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    m[:] = block[i * 4096:i * 4096 + 64 * 1024]
    smalls.append(m)


class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        body = b'{"ok": true}'
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


server = http.server.HTTPServer(("127.0.0.1", int(os.environ.get("PORT", "8080"))), Handler)
ready = os.environ.get("READY_FILE", "/run/rewarm/ready")
os.makedirs(os.path.dirname(ready), exist_ok=True)
open(ready, "w").close()
server.serve_forever()
