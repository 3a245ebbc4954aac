"""A private containerd for the demo, the tests and `thaw bake`: its own root, state, socket, CNI
network and runc root, so it never touches a containerd the machine already runs.

Its config starts from `containerd config default` and gets the thaw handler from `thaw install`
(the same code a node operator runs). The sandbox (pause) image and the worker image are built
locally from this machine's files (oci_image); nothing is pulled.
"""
from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import time
import zlib

import tomlkit

from runtime import install, oci_image
from runtime.containerd_api import Containerd, ContainerdError

PAUSE_IMAGE = "localhost/thaw/pause:lab"
NAMESPACE = "k8s.io"


def _set(doc: dict, dotted: list[str], value: object) -> None:
    for key in dotted[:-1]:
        doc = doc[key]
    doc[dotted[-1]] = value


class Lab:
    def __init__(self, name: str, thaw_config: str | None = None, base: str = "/var/lib/thaw-lab"):
        self.name = name
        self.root = os.path.join(base, name)
        self.state = os.path.join("/run/thaw-lab", name)
        self.address = os.path.join(self.state, "containerd.sock")
        self.config = os.path.join(self.root, "config.toml")
        self.logs = os.path.join(self.root, "pod-logs")
        self.thaw_config = thaw_config
        self.runc_root = os.path.join(self.state, "runc")
        self.process: subprocess.Popen | None = None
        n = zlib.crc32(name.encode()) % 200 + 20
        self.subnet = f"10.213.{n}.0/24"
        self.bridge = f"thaw{n}"

    def setup(self, thaw_runc: str) -> "Lab":
        """From nothing to a running containerd with the thaw handler and the pause image."""
        self.destroy()
        self.write_config(thaw_runc)
        self.start()
        self.build_pause_image()
        return self

    # configuration
    def write_config(self, thaw_runc: str, with_thaw: bool = True) -> None:
        os.makedirs(self.root, exist_ok=True)
        os.makedirs(self.logs, exist_ok=True)
        text = subprocess.run(["containerd", "config", "default"], capture_output=True, text=True, check=True).stdout
        doc = tomlkit.parse(text)
        cri = ["plugins", "io.containerd.grpc.v1.cri"]
        for path, value in (
            (["root"], os.path.join(self.root, "containerd")),
            (["state"], os.path.join(self.state, "containerd")),
            (["grpc", "address"], self.address),
            ([*cri, "sandbox_image"], PAUSE_IMAGE),
            ([*cri, "restrict_oom_score_adj"], True),   # this VM refuses negative oom_score_adj
            ([*cri, "cni", "bin_dir"], "/usr/lib/cni"),
            ([*cri, "cni", "conf_dir"], os.path.join(self.root, "cni")),
            ([*cri, "containerd", "runtimes", "runc", "options", "Root"], self.runc_root),
            (["plugins", "io.containerd.internal.v1.opt", "path"], os.path.join(self.root, "opt")),
        ):
            _set(doc, path, value)
        text = tomlkit.dumps(doc)
        with open(self.config, "w") as f:
            f.write(install.containerd_config(text, thaw_runc) if with_thaw else text)
        os.makedirs(os.path.join(self.root, "cni"), exist_ok=True)
        with open(os.path.join(self.root, "cni", "10-thaw-lab.conflist"), "w") as f:
            json.dump({"cniVersion": "0.4.0", "name": f"thaw-lab-{self.name}", "plugins": [
                {"type": "bridge", "bridge": self.bridge, "isGateway": False, "ipMasq": False,
                 "ipam": {"type": "host-local", "ranges": [[{"subnet": self.subnet}]],
                          "dataDir": os.path.join(self.root, "cni-ipam")}}]}, f)

    # daemon
    def start(self, timeout: float = 60) -> None:
        os.makedirs(self.state, exist_ok=True)
        env = dict(os.environ)
        if self.thaw_config:
            env["THAW_CONFIG"] = self.thaw_config
        log = open(os.path.join(self.root, "containerd.log"), "ab")
        self.process = subprocess.Popen(["containerd", "--config", self.config], stdout=log, stderr=log,
                                        stdin=subprocess.DEVNULL, env=env, start_new_session=True)
        log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"containerd exited ({self.process.returncode}); see {self.root}/containerd.log")
            with contextlib.suppress(ContainerdError), Containerd(self.address, NAMESPACE, timeout=2) as c:
                c.version()
                if self._cri_ready():
                    return
            time.sleep(0.2)
        raise RuntimeError(f"containerd did not answer within {timeout}s; see {self.root}/containerd.log")

    def _cri_ready(self) -> bool:
        from runtime import cri
        try:
            with cri.Client(self.address, timeout=5) as client:
                client.version()
            return True
        except cri.CriError:
            return False

    def stop_daemon(self) -> None:
        """Stop containerd only: the shims and containers keep running (as on a containerd restart)."""
        if self.process and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None

    def restart(self) -> None:
        self.stop_daemon()
        self.start()

    # images
    def build_pause_image(self) -> None:
        busybox = shutil.which("busybox") or "/bin/busybox"
        oci_image.build_and_import(oci_image.ImageSpec(
            name=PAUSE_IMAGE, entrypoint=[busybox, "sleep", "2147483647"], paths=[busybox]),
            self.address, NAMESPACE)

    def build_worker_image(self, name: str, app_dir: str, entrypoint: list[str], env: list[str] | None = None) -> str:
        spec = oci_image.ImageSpec(name=name, entrypoint=entrypoint, workdir="/app",
                                   env=["PATH=/usr/local/bin:/usr/bin:/bin", *(env or [])],
                                   paths=oci_image.python_paths(), trees={"/app": app_dir},
                                   files={"/etc/passwd": b"root:x:0:0:root:/root:/bin/sh\n",
                                          "/etc/group": b"root:x:0:\n"})
        return oci_image.build_and_import(spec, self.address, NAMESPACE)

    def pod(self, name: str, image: str, command: list[str], **kwargs) -> "Pod":  # type: ignore[no-untyped-def]
        return Pod(self.address, self.logs, name, image, command, **kwargs)

    # cleanup
    def destroy(self) -> None:
        """Kill what runs under this lab, stop containerd, unmount and remove its directories."""
        if os.path.isdir(self.runc_root):
            for ns in os.listdir(self.runc_root):
                root = os.path.join(self.runc_root, ns)
                for cid in os.listdir(root):
                    subprocess.run(["runc", "--root", root, "delete", "--force", cid], capture_output=True)
        self.stop_daemon()
        for proc in _processes_mentioning(self.state) + _processes_mentioning(self.config):  # shims, a lost daemon
            with contextlib.suppress(ProcessLookupError):
                os.kill(proc, signal.SIGKILL)
        for path in (self.state, self.root):
            _unmount_under(path)
            shutil.rmtree(path, ignore_errors=True)
        subprocess.run(["ip", "link", "delete", self.bridge], capture_output=True)


def _processes_mentioning(text: str) -> list[int]:
    """containerd shims started for this lab (their command line names its state dir)."""
    pids = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        with contextlib.suppress(OSError):
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                if text.encode() in f.read():
                    pids.append(int(pid))
    return pids


def _unmount_under(path: str) -> None:
    with open("/proc/self/mountinfo") as f:
        points = [line.split()[4] for line in f]
    for point in sorted((p for p in points if p == path or p.startswith(path + "/")), key=len, reverse=True):
        subprocess.run(["umount", "-l", point], capture_output=True)


class Pod:
    """One pod with one container, created through CRI the way kubelet does it."""

    def __init__(self, address: str, log_root: str, name: str, image: str, command: list[str], *,
                 namespace: str = "default", annotations: dict[str, str] | None = None,
                 env: dict[str, str] | None = None, handler: str = "thaw", port: int = 8080,
                 container_name: str = "worker", mounts: list[tuple[str, str, bool]] | None = None):
        from runtime import cri
        self.name, self.port = name, port
        self.log_dir = os.path.join(log_root, f"{namespace}_{name}_{os.urandom(4).hex()}")
        os.makedirs(self.log_dir, exist_ok=True)
        self.client = cri.Client(address)
        self.config = cri.pod_config(name, namespace, annotations, self.log_dir)
        self.started = time.monotonic()
        self.pod_id = self.client.run_pod(self.config, handler)
        self.container_id = self.client.create_container(self.pod_id, cri.container_config(
            container_name, image, command, env=env, annotations=annotations, mounts=mounts,
            log_path="worker.log"), self.config)
        self.client.start_container(self.container_id)

    @property
    def log_path(self) -> str:
        return os.path.join(self.log_dir, "worker.log")

    def log(self) -> str:
        try:
            with open(self.log_path, encoding="utf-8", errors="replace") as f:
                return f.read()
        except FileNotFoundError:
            return ""

    def status(self):  # type: ignore[no-untyped-def]
        return self.client.container_status(self.container_id)

    def pid(self) -> int:
        return int(self.client.container_info(self.container_id)["pid"])

    def get(self, path: str = "/", timeout: float = 5) -> dict | None:
        """An HTTP GET inside the pod's network namespace, as a probe or a client in the pod would."""
        from runtime.bundles import http_get
        body = http_get(f"/proc/{self.pid()}/ns/net", f"http://127.0.0.1:{self.port}{path}", timeout)
        return json.loads(body) if body else None

    def post(self, path: str, payload: dict, timeout: float = 600) -> dict | None:
        from runtime import netns_http
        status, body = netns_http.request(f"/proc/{self.pid()}/ns/net", f"http://127.0.0.1:{self.port}{path}",
                                          json.dumps(payload).encode(), timeout)
        return json.loads(body) if status == 200 else None

    def wait_answer(self, timeout: float = 120) -> tuple[dict, float]:
        """The first answer and the seconds from RunPodSandbox to it."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            answer = self.get(timeout=2)
            if answer is not None:
                return answer, time.monotonic() - self.started
            time.sleep(0.05)
        raise TimeoutError(f"pod {self.name} did not answer within {timeout}s; log:\n{self.log()[-2000:]}")

    def delete(self) -> None:
        """Stop and remove the container and the sandbox, as kubelet does when a pod is deleted."""
        with contextlib.suppress(Exception):
            self.client.stop_container(self.container_id, timeout=10)
            self.client.remove_container(self.container_id)
        with contextlib.suppress(Exception):
            self.client.stop_pod(self.pod_id)
            self.client.remove_pod(self.pod_id)
        self.client.close()
