"""A stand-in for the Kubernetes API server at rewarm agent's seam (a real one cannot run here):
the API's HTTP routes for core/v1 Events and a node's labels, answering as the API server does, and
recording what the real kubernetes client sent."""
from __future__ import annotations

import json
import ssl
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class StandInApiServer:
    """Named as what it is: it answers POST /api/v1/namespaces/NS/events with 201 and the object,
    and PATCH /api/v1/nodes/NAME with the node's new labels."""

    def __init__(self, tls: tuple[str, str] | None = None) -> None:
        self.posted: list[tuple[str, dict]] = []
        self.patched: list[tuple[str, dict]] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                data = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                outer.posted.append((self.path, data))
                data.setdefault("metadata", {})["name"] = data["metadata"].get("generateName", "e.") + "x1"
                reply = json.dumps(data).encode()
                self.send_response(201)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(reply)))
                self.end_headers()
                self.wfile.write(reply)

            def do_PATCH(self) -> None:   # a node's labels (strategic merge patch)
                data = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                outer.patched.append((self.path, data))
                reply = json.dumps({"kind": "Node", "apiVersion": "v1", "metadata": {"name": self.path.split("/")[-1],
                                    **data["metadata"]}}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(reply)))
                self.end_headers()
                self.wfile.write(reply)

            def log_message(self, *args: object) -> None:
                pass
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        if tls:   # (certificate, key): HTTPS, as a pod's in-cluster config reaches the API server
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            context.load_cert_chain(*tls)
            self.server.socket = context.wrap_socket(self.server.socket, server_side=True)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.port = self.server.server_address[1]
        self.url = f"{'https' if tls else 'http'}://127.0.0.1:{self.port}"

    def kubeconfig(self, path: str) -> str:
        with open(path, "w") as f:
            json.dump({"apiVersion": "v1", "kind": "Config", "current-context": "lab",
                       "clusters": [{"name": "lab", "cluster": {"server": self.url}}],
                       "users": [{"name": "agent", "user": {"token": "stand-in"}}],
                       "contexts": [{"name": "lab", "context": {"cluster": "lab", "user": "agent"}}]}, f)
        return path

    def labels(self) -> list[dict]:
        """The node labels each PATCH set, in order."""
        return [data["metadata"].get("labels", {}) for _, data in self.patched]

    def reasons(self, pod: str) -> list[str]:
        """The reasons of the Events posted about one pod, in order."""
        return [data["reason"] for _, data in self.posted if data.get("involvedObject", {}).get("name") == pod]
