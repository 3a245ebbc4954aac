"""A stand-in for the Kubernetes API server at rewarm agent's seam (a real one cannot run here):
the API's HTTP routes for core/v1 Events, a node's labels, a pod and its status, answering as the
API server does, and recording what the real kubernetes client sent. `answer` makes it a broken or
hostile one."""
from __future__ import annotations

import json
import ssl
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

ANSWERS = ("normal",    # as the API server: 201 and the object; 409 AlreadyExists for a name it has
           "empty",     # the Event is made, the answer is a 201 with no body
           "not-json",  # the Event is made, the answer is a 201 with an HTML page
           "huge",      # the Event is made, the answer is a 201 of HUGE bytes
           "hang",      # the Event is made, no answer ever comes (the connection stays open)
           "error")     # nothing is made: 500 with a Status
HUGE = 200 << 20


GATE = "rewarm.dev/ready"


def pod_object(namespace: str, name: str, uid: str, gated: bool, ready: bool = False) -> dict:
    """A pod as the API server keeps it: what the agent reads of one, and a managed-fields bulk."""
    return {"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "namespace": namespace, "uid": uid, "resourceVersion": "1",
                         "managedFields": [{"manager": "kubelet", "fieldsV1": {"f:status": {"x" * 40: {}}}}] * 20},
            "spec": {"containers": [{"name": "worker", "image": "worker"}],
                     **({"readinessGates": [{"conditionType": GATE}]} if gated else {})},
            "status": {"phase": "Running",
                       "conditions": [{"type": "Ready", "status": "True" if ready else "False"}]}}


class StandInApiServer:
    """Named as what it is: it answers POST /api/v1/namespaces/NS/events, PATCH /api/v1/nodes/NAME,
    GET /api/v1/namespaces/NS/pods/NAME and PATCH .../pods/NAME/status (a strategic merge of
    status.conditions by type, refused with 409 where the patch's metadata.uid is not the pod's) as
    `answer` says. `posted` holds the Events it made, `patched` the label patches it applied, `pods`
    the pods it knows (add_pod), `condition_log` every gate condition it set, with when."""

    def __init__(self, tls: tuple[str, str] | None = None) -> None:
        self.posted: list[tuple[str, dict]] = []
        self.patched: list[tuple[str, dict]] = []
        self.pods: dict[tuple[str, str], dict] = {}
        self.condition_log: list[tuple[float, str, str, dict]] = []   # (time.time(), namespace, pod, condition)
        self.answer = "normal"
        self.requests = 0                       # every request that came, answered or not
        self.by_method: dict[str, int] = {}     # the same, by HTTP method
        self.credentials: set[str] = set()      # the Authorization headers they carried
        self._names: set[tuple[str, str]] = set()
        self._lock = threading.Lock()
        self._released = threading.Event()      # ends the hanging answers
        outer = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"       # keep-alive, as the API server

            def do_POST(self) -> None:
                data = self._request()
                name = data.setdefault("metadata", {}).get("name") or data["metadata"].get("generateName", "e.") + "x1"
                data["metadata"]["name"] = name
                answer = outer.answer
                if answer == "error":
                    return self._reply(500, {"kind": "Status", "code": 500, "message": "etcd is away"})
                with outer._lock:
                    known = (self.path, name) in outer._names
                    if not known:
                        outer._names.add((self.path, name))
                        outer.posted.append((self.path, data))
                if known and answer != "hang":
                    return self._reply(409, {"kind": "Status", "code": 409, "reason": "AlreadyExists",
                                             "message": f'events "{name}" already exists'})
                self._odd_or(answer, 201, data)

            def do_GET(self) -> None:   # a pod
                with outer._lock:
                    outer._count(self)
                    pod = outer.pods.get(self._pod_key())
                    pod = json.loads(json.dumps(pod)) if pod else None
                if outer.answer == "error":
                    return self._reply(500, {"kind": "Status", "code": 500, "message": "etcd is away"})
                if pod is None:
                    return self._reply(404, {"kind": "Status", "code": 404, "reason": "NotFound"})
                self._odd_or(outer.answer, 200, pod)

            def _pod_key(self) -> tuple[str, str]:
                parts = self.path.split("/")   # /api/v1/namespaces/NS/pods/NAME[/status]
                return (parts[4], parts[6]) if len(parts) >= 7 and parts[5] == "pods" else ("", "")

            def do_PATCH(self) -> None:   # a node's labels, or a pod's status (strategic merge patches)
                data = self._request()
                answer = outer.answer
                if answer == "error":
                    return self._reply(500, {"kind": "Status", "code": 500, "message": "etcd is away"})
                if self.path.endswith("/status"):
                    return self._patch_status(data)
                if answer != "hang":
                    outer.patched.append((self.path, data))
                self._odd_or(answer, 200, {"kind": "Node", "apiVersion": "v1",
                                           "metadata": {"name": self.path.split("/")[-1], **data["metadata"]}})

            def _patch_status(self, data: dict) -> None:
                if self.headers.get("Content-Type") != "application/strategic-merge-patch+json":
                    return self._reply(415, {"kind": "Status", "code": 415})
                with outer._lock:
                    pod = outer.pods.get(self._pod_key())
                    uid = data.get("metadata", {}).get("uid")
                    if pod is None:
                        return self._reply(404, {"kind": "Status", "code": 404, "reason": "NotFound"})
                    if uid is not None and uid != pod["metadata"]["uid"]:
                        return self._reply(409, {"kind": "Status", "code": 409, "reason": "Conflict",
                                                 "message": f"Precondition failed: UID in precondition: {uid}, "
                                                            f"UID in object meta: {pod['metadata']['uid']}"})
                    conditions = pod["status"]["conditions"]
                    for change in data.get("status", {}).get("conditions", []):
                        now = next((c for c in conditions if c["type"] == change["type"]), None)
                        if now is None:
                            conditions.append(dict(change))
                        else:
                            now.update(change)
                        outer.condition_log.append((time.time(), *self._pod_key(), dict(change)))
                    answer = json.loads(json.dumps(pod))
                self._odd_or(outer.answer, 200, answer)

            def _request(self) -> dict:
                with outer._lock:
                    outer._count(self)
                return json.loads(self.rfile.read(int(self.headers["Content-Length"])))

            def _odd_or(self, answer: str, status: int, obj: dict) -> None:
                if answer == "hang":
                    outer._released.wait()
                    self.close_connection = True
                elif answer == "empty":
                    self._send(status, b"", "application/json")
                elif answer == "not-json":
                    self._send(status, b"<html><body>502 Bad Gateway</body></html>", "text/html")
                elif answer == "huge":
                    self._huge(status)
                else:
                    self._reply(status, obj)

            def _reply(self, status: int, obj: dict) -> None:
                self._send(status, json.dumps(obj).encode(), "application/json")

            def _send(self, status: int, reply: bytes, content_type: str) -> None:
                self.send_response(status)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(reply)))
                self.end_headers()
                self.wfile.write(reply)

            def _huge(self, status: int) -> None:
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(HUGE))
                self.end_headers()
                block = b'{"pad": "' + b"x" * ((1 << 20) - 11) + b'"}'
                try:
                    for _ in range(HUGE // len(block)):
                        self.wfile.write(block)
                except (BrokenPipeError, ConnectionResetError):
                    pass   # the client stopped reading: what a bounded client does
                self.close_connection = True

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

    def _count(self, request: BaseHTTPRequestHandler) -> None:
        self.requests += 1
        self.by_method[request.command] = self.by_method.get(request.command, 0) + 1
        self.credentials.add(request.headers.get("Authorization", ""))

    def close(self) -> None:
        self._released.set()
        self.server.shutdown()
        self.server.server_close()

    def kubeconfig(self, path: str) -> str:
        with open(path, "w") as f:
            json.dump({"apiVersion": "v1", "kind": "Config", "current-context": "lab",
                       "clusters": [{"name": "lab", "cluster": {"server": self.url}}],
                       "users": [{"name": "agent", "user": {"token": "stand-in"}}],
                       "contexts": [{"name": "lab", "context": {"cluster": "lab", "user": "agent"}}]}, f)
        return path

    def add_pod(self, namespace: str, name: str, uid: str, gated: bool, ready: bool = False) -> None:
        with self._lock:
            self.pods[(namespace, name)] = pod_object(namespace, name, uid, gated, ready)

    def condition(self, namespace: str, name: str) -> dict | None:
        """The pod's rewarm.dev/ready condition now, or None while it has none."""
        with self._lock:
            pod = self.pods.get((namespace, name)) or {"status": {"conditions": []}}
            found = [dict(c) for c in pod["status"]["conditions"] if c["type"] == GATE]
        return found[0] if found else None

    def events_of(self, pod: str) -> list[dict]:
        """The Events made about one pod, in order."""
        return [data for _, data in self.posted if data.get("involvedObject", {}).get("name") == pod]

    def labels(self) -> list[dict]:
        """The node labels each PATCH set, in order."""
        return [data["metadata"].get("labels", {}) for _, data in self.patched]

    def reasons(self, pod: str) -> list[str]:
        """The reasons of the Events posted about one pod, in order."""
        return [data["reason"] for _, data in self.posted if data.get("involvedObject", {}).get("name") == pod]

    def messages(self) -> list[str]:
        """The message of every Event made, in order."""
        return [data["message"] for _, data in self.posted]
