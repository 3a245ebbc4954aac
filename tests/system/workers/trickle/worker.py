"""A worker whose hooks can trickle: POST /trickle answers 200 with a body that comes one byte
every TRICKLE_GAP seconds and never ends (a broken or hostile worker: every read of it stays inside
a socket timeout). POST /sleep and /wake_up answer at once. GET / says which boot this is."""
import http.server
import json
import os
import signal
import sys
import time
import uuid

BOOT_ID = uuid.uuid4().hex
GAP = float(os.environ.get("TRICKLE_GAP", "1"))


class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self._answer(json.dumps({"boot_id": BOOT_ID}).encode())

    def do_POST(self):
        if self.path == "/trickle":
            self.send_response(200)
            self.send_header("Content-Length", str(1 << 20))
            self.end_headers()
            while True:
                self.wfile.write(b"x")
                self.wfile.flush()
                time.sleep(GAP)
        self._answer(b"{}")

    def _answer(self, body: bytes) -> None:
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
server = http.server.ThreadingHTTPServer(("0.0.0.0", int(os.environ.get("PORT", "8080"))), Handler)
server.daemon_threads = True
READY_FILE = "/run/rewarm/ready"   # rewarm's default readiness signal, inside the container
os.makedirs(os.path.dirname(READY_FILE), exist_ok=True)
open(READY_FILE, "w").close()
server.serve_forever()
