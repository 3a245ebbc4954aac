"""A small container lab on one node: worker containers driven through a runc-compatible runtime
(rewarm-runc or plain runc) the way containerd's shim drives them: pipes for stdio, a pid file, a
runtime log in JSON. Used by the tests and the benchmarks.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
import time
import uuid
from dataclasses import dataclass, field

from typing import Any

from runtime.netns import netns_http
from runtime.lab import bundles

CHECKOUT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
WORKER_DIR = os.path.join(CHECKOUT, "examples", "warm-worker")


def rewarm_runc() -> str:
    """The rewarm-runc beside the running interpreter (the venv's), else the one on PATH."""
    beside = os.path.join(os.path.dirname(sys.executable), "rewarm-runc")
    return beside if os.path.exists(beside) else (shutil.which("rewarm-runc") or "rewarm-runc")


@dataclass
class Container:
    lab: "Lab"
    cid: str
    netns: str
    bundle: bundles.Bundle
    runtime: str
    output: list[bytes] = field(default_factory=list)
    create_rc: int = -1
    create_seconds: float = 0.0
    started_at: float = 0.0

    @property
    def log_path(self) -> str:
        return os.path.join(self.lab.dir, f"{self.cid}.runtime.log")

    @property
    def pid_file(self) -> str:
        return os.path.join(self.lab.dir, f"{self.cid}.pid")

    def runtime_cmd(self, *args: str, check: bool = False, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        return subprocess.run([self.runtime, "--root", self.lab.runc_root, *args], capture_output=True,
                              text=True, check=check, timeout=timeout)

    def state(self) -> dict[str, Any]:
        proc = self.runtime_cmd("state", self.cid)
        return json.loads(proc.stdout) if proc.returncode == 0 else {}

    def text(self) -> str:
        return b"".join(self.output).decode(errors="replace")

    def wait_output(self, needle: str, timeout: float = 30) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if needle in self.text():
                return True
            time.sleep(0.05)
        return False

    def get(self, path: str = "/", timeout: float = 5, host: str = "127.0.0.1") -> Any:
        body = bundles.http_get(self.netns, f"http://{host}:{self.lab.port}{path}", timeout)
        return json.loads(body) if body else None

    def post(self, path: str, payload: dict[str, Any], timeout: float = 600) -> Any:
        status, body = netns_http.request(self.netns, f"http://127.0.0.1:{self.lab.port}{path}",
                                          json.dumps(payload).encode(), timeout)
        return json.loads(body) if status == 200 else None

    def wait_ready(self, timeout: float = 120, path: str = "/", host: str = "127.0.0.1") -> tuple[Any, float]:
        """Poll until the worker answers; returns the answer and seconds since create began."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            answer = self.get(path, timeout=2, host=host)
            if answer:
                return answer, time.monotonic() - self.started_at
            time.sleep(0.05)
        raise TimeoutError(f"{self.cid} did not answer within {timeout}s; output: {self.text()[-2000:]}")

    def runtime_log(self) -> str:
        try:
            with open(self.log_path) as f:
                return f.read()
        except FileNotFoundError:
            return ""

    def destroy(self) -> None:
        self.runtime_cmd("delete", "--force", self.cid)
        self.bundle.remove()
        bundles.remove_netns(os.path.basename(self.netns))


class Lab:
    def __init__(self, directory: str, port: int = 8080) -> None:
        self.dir = directory
        self.port = port
        self.runc_root = os.path.join(directory, "runc-root")
        self.base = bundles.make_base_rootfs(os.path.join(directory, "base"))
        self.containers: list[Container] = []
        self.tag = uuid.uuid4().hex[:6]

    def worker(self, annotations: dict[str, str] | None = None, env: dict[str, str] | None = None,
               args: list[str] | None = None, app_dir: str = WORKER_DIR) -> bundles.Worker:
        env = {"WARM_SECONDS": "2", "PORT": str(self.port), **(env or {})}
        return bundles.Worker(args=args or ["/usr/bin/python3", "/app/worker.py"],
                              env=[f"{k}={v}" for k, v in env.items()], binds={"/app": app_dir},
                              annotations=dict(annotations or {}))

    def gpu_worker(self, annotations: dict[str, str], env: dict[str, str], app_dir: str,
                   script: str = "worker.py") -> bundles.Worker:
        """A worker run by this interpreter (which has torch) with the node's first GPU."""
        from runtime.gpu import nvml
        w = self.worker(annotations, env={"LD_LIBRARY_PATH": nvml.libcuda_dir(), **env},
                        args=[sys.executable, f"/app/{script}"], app_dir=app_dir)
        for d in ("/etc", "/opt"):
            if os.path.isdir(d):
                w.binds[d] = d
        w.devices = nvml.device_nodes()
        return w

    def _prepare(self, name: str, worker: bundles.Worker, runtime: str | None) -> tuple[Container, int]:
        """A container's bundle, network namespace and output pipe (returns the pipe's write end)."""
        cid = f"{name}-{self.tag}"
        netns_name = f"rewarm-{cid}"
        netns = bundles.make_netns(netns_name)
        bundle = bundles.make_bundle(os.path.join(self.dir, cid), self.base, worker, netns, f"/rewarm-lab/{cid}")
        c = Container(self, cid, netns_name, bundle, runtime or rewarm_runc())
        self.containers.append(c)
        r, w = os.pipe()
        threading.Thread(target=self._pump, args=(r, c.output), daemon=True).start()
        c.started_at = time.monotonic()
        return c, w

    def _verb(self, c: Container, *verb: str) -> list[str]:
        return [c.runtime, "--root", self.runc_root, "--log", c.log_path, "--log-format", "json", *verb,
                "--bundle", c.bundle.path, "--pid-file", c.pid_file, c.cid]

    def create(self, name: str, worker: bundles.Worker, runtime: str | None = None, start: bool = True) -> Container:
        """`create` then `start`, the way containerd's shim does it."""
        c, w = self._prepare(name, worker, runtime)
        proc = subprocess.run(self._verb(c, "create"), stdin=subprocess.DEVNULL, stdout=w, stderr=w, timeout=600)
        os.close(w)
        c.create_rc = proc.returncode
        c.create_seconds = time.monotonic() - c.started_at
        if start and proc.returncode == 0:
            c.runtime_cmd("start", c.cid, check=True)
        return c

    def run(self, name: str, worker: bundles.Worker, detach: bool) -> tuple[Container, subprocess.Popen[bytes]]:
        """`run` (create and start in one), detached or in the foreground (the returned runtime
        process then lives as long as the container)."""
        c, w = self._prepare(name, worker, None)
        proc = subprocess.Popen(self._verb(c, "run", *(["--detach"] if detach else [])), stdin=subprocess.DEVNULL,
                                stdout=w, stderr=w)
        os.close(w)
        return c, proc

    @staticmethod
    def _pump(fd: int, sink: list[bytes]) -> None:
        while True:
            try:
                chunk = os.read(fd, 65536)
            except OSError:
                return
            if not chunk:
                os.close(fd)
                return
            sink.append(chunk)

    def close(self) -> None:
        for c in self.containers:
            c.destroy()
