"""The proxy in front of the engine in examples/vllm and examples/sglang: proxy-config.yaml's
nginx.conf, byte for byte, run by nginx in a network namespace of its own as in the pod (the proxy on
8080, a stand-in engine on its 127.0.0.1 port that records every request it gets). The serving API
reaches the engine, whole and streamed; the endpoints rewarm's hooks call on 127.0.0.1 inside the pod
(vLLM's dev mode, SGLang's memory and weight endpoints) and the engines' other admin endpoints never
do, however the path is spelled."""
from __future__ import annotations

import http.client
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from typing import Iterator

import pytest
import yaml

from runtime.netns import netns_http

TOP = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
NGINX = shutil.which("nginx") or "/usr/sbin/nginx"

# A stand-in for the engine's HTTP side: every path answers 200 with what it got (and one path streams).
ENGINE = r'''
import http.server, json, sys
class H(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def answer(self):
        length = int(self.headers.get("Content-Length") or 0)
        got = {"method": self.command, "path": self.path, "body": self.rfile.read(length).decode()}
        print(json.dumps(got), flush=True)
        if self.path.startswith("/v1/completions") and "stream" in got["body"]:
            self.send_response(200)
            self.send_header("Content-Type", "text/event-stream")
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            for i in range(3):
                chunk = f"data: token-{i}\n\n".encode()
                self.wfile.write(f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n")
                self.wfile.flush()
            self.wfile.write(b"0\r\n\r\n")
            return
        body = json.dumps(got).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    do_GET = do_POST = answer
    def log_message(self, *a): pass
http.server.ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), H).serve_forever()
'''


PORTS = {"vllm": 8000, "sglang": 30000}


def nginx_conf(engine: str) -> str:
    with open(os.path.join(TOP, "examples", engine, "proxy-config.yaml")) as f:
        return yaml.safe_load(f)["data"]["nginx.conf"]


class PodNet:
    """A network namespace standing in for the pod's, with the stand-in engine and the proxy in it."""

    def __init__(self, top: str, engine: str) -> None:
        self.engine, self.port = engine, PORTS[engine]
        self.name = f"rewarm-proxy-{uuid.uuid4().hex[:8]}"
        self.processes: list[subprocess.Popen[bytes]] = []
        subprocess.run(["ip", "netns", "add", self.name], check=True)
        try:
            self._start(top)
        except BaseException:
            self.close()
            raise

    def _start(self, top: str) -> None:
        subprocess.run(["ip", "netns", "exec", self.name, "ip", "link", "set", "lo", "up"], check=True)
        conf = os.path.join(top, "nginx.conf")
        with open(conf, "w") as f:
            f.write(nginx_conf(self.engine))
        self.seen_file, errors = os.path.join(top, "engine.out"), os.path.join(top, "nginx.err")
        with open(self.seen_file, "w") as out:
            self.processes.append(subprocess.Popen(["ip", "netns", "exec", self.name, sys.executable, "-c", ENGINE,
                                                    str(self.port)], stdout=out, start_new_session=True))
        # nginx.conf keeps its pid and temporary files in /tmp (the pod's emptyDir): a /tmp of its own here.
        with open(errors, "w") as err:
            self.processes.append(subprocess.Popen(
            ["ip", "netns", "exec", self.name, "unshare", "--mount", "--propagation", "private", "sh", "-c",
             'cp "$1" /run/rewarm-proxy.conf.$$ 2>/dev/null || exit 1; mount -t tmpfs tmpfs /tmp && '
             'mv /run/rewarm-proxy.conf.$$ /tmp/nginx.conf && exec "$2" -e /dev/stderr -c /tmp/nginx.conf '
             '-g "daemon off;"', "sh", conf, NGINX], stderr=err, start_new_session=True))
        deadline = time.monotonic() + 20
        while not (self._answers(self.port) and self._answers(8080)):
            assert all(p.poll() is None for p in self.processes), open(errors).read()
            assert time.monotonic() < deadline, "the proxy or the stand-in engine did not come up"
            time.sleep(0.05)

    def _answers(self, port: int) -> bool:
        try:
            netns_http.connect(f"/run/netns/{self.name}", "127.0.0.1", port, 1).close()
            return True
        except OSError:
            return False

    def send(self, method: str, raw_path: str, body: bytes | None = None) -> tuple[int, bytes]:
        """One request to the proxy, its path sent exactly as given."""
        sock = netns_http.connect(f"/run/netns/{self.name}", "127.0.0.1", 8080, 5)
        conn = http.client.HTTPConnection("127.0.0.1", 8080, timeout=5)
        conn.sock = sock
        try:
            conn.putrequest(method, raw_path, skip_accept_encoding=True)
            conn.putheader("Content-Length", str(len(body or b"")))
            conn.endheaders(body or b"")
            response = conn.getresponse()
            return response.status, response.read()
        finally:
            conn.close()

    def seen(self) -> list[dict]:
        with open(self.seen_file) as f:
            return [json.loads(line) for line in f if line.strip()]

    def close(self) -> None:
        for p in self.processes:   # each its own process group: nginx's workers outlive a killed master
            os.killpg(p.pid, signal.SIGKILL)
            p.wait()
        subprocess.run(["ip", "netns", "delete", self.name], check=True)


@pytest.fixture(params=sorted(PORTS))
def pod_net(tmp_path, request) -> Iterator[PodNet]:
    net = PodNet(str(tmp_path), request.param)
    yield net
    net.close()


# The serving API of each engine, which the proxy passes on as sent.
PUBLIC = {
    "vllm": [("POST", "/v1/completions"), ("POST", "/v1/chat/completions"), ("GET", "/v1/models"),
             ("GET", "/health"), ("GET", "/metrics"), ("GET", "/version"), ("GET", "/v1/models?limit=1")],
    "sglang": [("POST", "/generate"), ("POST", "/v1/completions"), ("POST", "/v1/chat/completions"),
               ("GET", "/v1/models"), ("GET", "/health"), ("GET", "/health_generate"), ("GET", "/model_info"),
               ("GET", "/get_model_info"), ("GET", "/metrics")],
}
# What must never reach it: the hooks rewarm calls inside the pod, the engine's other admin endpoints,
# and spellings of them that a path normalization could turn into them.
HIDDEN = {
    "vllm": ["/sleep?level=2", "/wake_up", "/wake_up?tags=weights", "/collective_rpc", "/is_sleeping",
             "/reset_prefix_cache", "/server_info", "/", "/health/../sleep", "/v1/../sleep", "/v1/%2e%2e/sleep",
             "/v1/%2E%2E/wake_up", "//sleep", "/./sleep", "/v1/..%2fsleep", "/%2fsleep", "/health%2f..%2fsleep",
             "/HEALTH", "/metrics/../collective_rpc"],
    "sglang": ["/release_memory_occupation", "/resume_memory_occupation", "/update_weights_from_disk",
               "/flush_cache", "/start_profile", "/stop_profile", "/abort_request", "/set_internal_state",
               "/configure_logging", "/get_server_info", "/", "/generate/../flush_cache",
               "/v1/%2e%2e/release_memory_occupation", "//resume_memory_occupation", "/./update_weights_from_disk",
               "/health%2f..%2fflush_cache", "/GENERATE", "/generate/", "/metrics/../release_memory_occupation"],
}


def test_the_serving_api_reaches_the_engine_as_sent(pod_net):
    for method, path in PUBLIC[pod_net.engine]:
        status, body = pod_net.send(method, path, b'{"prompt": "hi"}' if method == "POST" else None)
        assert status == 200, (path, body)
        assert json.loads(body)["path"] == path and pod_net.seen()[-1]["path"] == path


def test_the_hook_and_admin_endpoints_never_reach_the_engine_however_the_path_is_spelled(pod_net):
    for path in HIDDEN[pod_net.engine]:
        for method in ("POST", "GET"):
            status, _ = pod_net.send(method, path, b"{}" if method == "POST" else None)
            assert status in (400, 404), (method, path, status)
    assert pod_net.seen() == []


def test_a_path_that_normalizes_into_the_api_reaches_the_engine_normalized(pod_net):
    """nginx matches the normalized path and, with a URI after the upstream, passes that one on: the
    engine never sees a path that its own router could read another way."""
    status, body = pod_net.send("GET", "/sleep/../v1/models")
    assert status == 200 and json.loads(body)["path"] == "/v1/models"


def test_streamed_tokens_pass_through(pod_net):
    status, body = pod_net.send("POST", "/v1/completions", b'{"prompt": "hi", "stream": true}')
    assert status == 200 and body == b"".join(f"data: token-{i}\n\n".encode() for i in range(3))
