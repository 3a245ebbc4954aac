"""A private containerd for the demo and the tests: its own root, state, socket, CNI network and
runc root, so it never touches a containerd the machine already runs.

Its config starts from `containerd config default` and gets the rewarm handler from `rewarm install`
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

from typing import Any

import tomlkit

from runtime.container import mounts
from runtime.netns import netns_http
from runtime.clients import cri
from runtime.clients.containerd import Containerd, ContainerdError
from runtime.lab import bundles, oci_image
from runtime.lab.runc_lab import CHECKOUT
from runtime.node import install

PAUSE_IMAGE = "localhost/rewarm/pause:lab"
NAMESPACE = "k8s.io"
# Debian sid's containerd 2.x, unpacked here by packaging/setup.sh (its binaries need only libc):
# the tests run the CRI path against it as well as against the distribution's 1.6 / 1.7.
CONTAINERD_2_BIN = "/opt/rewarm/containerd-sid/usr/bin"

# Where the lab's settings live in each containerd config version (2: containerd 1.x, 3: 2.x).
_CRI_V2, _RT_V3, _IMAGES_V3 = (["plugins", "io.containerd.grpc.v1.cri"], ["plugins", "io.containerd.cri.v1.runtime"],
                               ["plugins", "io.containerd.cri.v1.images"])
LAB_KEYS: dict[int, dict[str, list[str]]] = {
    2: {"sandbox": [*_CRI_V2, "sandbox_image"], "oom": [*_CRI_V2, "restrict_oom_score_adj"],
        "cni_bin": [*_CRI_V2, "cni", "bin_dir"], "cni_conf": [*_CRI_V2, "cni", "conf_dir"],
        "runc_root": [*_CRI_V2, "containerd", "runtimes", "runc", "options", "Root"]},
    3: {"sandbox": [*_IMAGES_V3, "pinned_images", "sandbox"], "oom": [*_RT_V3, "restrict_oom_score_adj"],
        "cni_bin": [*_RT_V3, "cni", "bin_dirs"], "cni_conf": [*_RT_V3, "cni", "conf_dir"],
        "runc_root": [*_RT_V3, "containerd", "runtimes", "runc", "options", "Root"],
        "nri": ["plugins", "io.containerd.nri.v1.nri", "disable"]},
}


def _set(doc: Any, dotted: list[str], value: object) -> None:
    for key in dotted[:-1]:
        doc = doc[key]
    doc[dotted[-1]] = value


class Lab:
    def __init__(self, name: str, rewarm_config: str | None = None, base: str = "/var/lib/rewarm-lab",
                 bin_dir: str | None = None):
        """`bin_dir`: where containerd, its runc shim and ctr are (default: those on PATH)."""
        # Two checkouts on one machine (say, two branches under test) get labs of their own.
        self.name = f"{name}-{zlib.crc32(CHECKOUT.encode()) % 10000:04d}"
        self.bin_dir = bin_dir
        self.root = os.path.join(base, self.name)
        self.state = os.path.join("/run/rewarm-lab", self.name)
        self.address = os.path.join(self.state, "containerd.sock")
        self.config = os.path.join(self.root, "config.toml")
        self.logs = os.path.join(self.root, "pod-logs")
        self.rewarm_config = rewarm_config
        self.runc_root = os.path.join(self.state, "runc")
        self.process: subprocess.Popen[bytes] | None = None
        n = zlib.crc32(self.name.encode()) % 200 + 20
        self.subnet = f"10.213.{n}.0/24"
        self.bridge = f"rewarm{n}"

    def setup(self, rewarm_runc: str) -> "Lab":
        """From nothing to a running containerd with the rewarm handler and the pause image."""
        self.destroy()
        self.write_config(rewarm_runc)
        self.start()
        self.build_pause_image()
        return self

    def tool(self, name: str) -> str:
        return os.path.join(self.bin_dir, name) if self.bin_dir else name

    def env(self) -> dict[str, str]:
        """The daemon's environment: the shim beside its containerd, rewarm's config."""
        env = dict(os.environ)
        if self.bin_dir:
            env["PATH"] = self.bin_dir + os.pathsep + env.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
        if self.rewarm_config:
            env["REWARM_CONFIG"] = self.rewarm_config
        return env

    def version(self) -> str:
        return subprocess.run([self.tool("containerd"), "--version"], capture_output=True, text=True).stdout.split()[2]

    # configuration
    def write_config(self, rewarm_runc: str, with_rewarm: bool = True) -> None:
        """`containerd config default` of this containerd (version 2 or 3), pointed at the lab's own
        root, state, socket, CNI network and runc root; then the rewarm handler from `rewarm install`."""
        os.makedirs(self.root, exist_ok=True)
        os.makedirs(self.logs, exist_ok=True)
        text = subprocess.run([self.tool("containerd"), "config", "default"], capture_output=True, text=True,
                              check=True).stdout
        doc = tomlkit.parse(text)
        keys = LAB_KEYS[int(doc.get("version", 2))]
        values: dict[str, object] = {
            "sandbox": PAUSE_IMAGE, "oom": True,             # this VM refuses negative oom_score_adj
            "cni_bin": ["/usr/lib/cni"] if keys["cni_bin"][-1] == "bin_dirs" else "/usr/lib/cni",
            "cni_conf": os.path.join(self.root, "cni"), "runc_root": self.runc_root,
            "nri": True}                                     # no NRI socket shared with a node's containerd
        for path, value in (
            (["root"], os.path.join(self.root, "containerd")),
            (["state"], os.path.join(self.state, "containerd")),
            (["grpc", "address"], self.address),
            (["plugins", "io.containerd.internal.v1.opt", "path"], os.path.join(self.root, "opt")),
            *((keys[k], values[k]) for k in keys),
        ):
            _set(doc, path, value)
        text = tomlkit.dumps(doc)
        with open(self.config, "w") as f:
            f.write(install.containerd_config(text, rewarm_runc) if with_rewarm else text)
        os.makedirs(os.path.join(self.root, "cni"), exist_ok=True)
        with open(os.path.join(self.root, "cni", "10-rewarm-lab.conflist"), "w") as f:
            json.dump({"cniVersion": "0.4.0", "name": f"rewarm-lab-{self.name}", "plugins": [
                {"type": "bridge", "bridge": self.bridge, "isGateway": False, "ipMasq": False,
                 "ipam": {"type": "host-local", "ranges": [[{"subnet": self.subnet}]],
                          "dataDir": os.path.join(self.root, "cni-ipam")}}]}, f)

    # daemon
    def start(self, timeout: float = 60) -> None:
        os.makedirs(self.state, exist_ok=True)
        log = open(os.path.join(self.root, "containerd.log"), "ab")
        self.process = subprocess.Popen([self.tool("containerd"), "--config", self.config], stdout=log, stderr=log,
                                        stdin=subprocess.DEVNULL, env=self.env(), start_new_session=True)
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
            self.address, NAMESPACE, ctr=self.tool("ctr"))

    def build_worker_image(self, name: str, app_dir: str, entrypoint: list[str], env: list[str] | None = None) -> str:
        spec = oci_image.ImageSpec(name=name, entrypoint=entrypoint, workdir="/app",
                                   env=["PATH=/usr/local/bin:/usr/bin:/bin", *(env or [])],
                                   paths=oci_image.python_paths(), trees={"/app": app_dir},
                                   files={"/etc/passwd": b"root:x:0:0:root:/root:/bin/sh\n",
                                          "/etc/group": b"root:x:0:\n"})
        return oci_image.build_and_import(spec, self.address, NAMESPACE, ctr=self.tool("ctr"))

    def pod(self, name: str, image: str, command: list[str], **kwargs: Any) -> "Pod":
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
        for proc in processes_mentioning(self.state) + processes_mentioning(self.config):  # shims, a lost daemon
            with contextlib.suppress(ProcessLookupError):
                os.kill(proc, signal.SIGKILL)
        for path in (self.state, self.root):
            mounts.unmount_under(path)
            shutil.rmtree(path, ignore_errors=True)
        subprocess.run(["ip", "link", "delete", self.bridge], capture_output=True)


def processes_mentioning(text: str) -> list[int]:
    """containerd shims started for this lab (their command line names its state dir)."""
    pids = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        with contextlib.suppress(OSError):
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                if text.encode() in f.read():
                    pids.append(int(pid))
    return pids


class Pod(cri.Pod):
    """A CRI pod of the lab, with the HTTP calls a probe or a client inside the pod would make."""

    def __init__(self, address: str, log_root: str, name: str, image: str, command: list[str], *,
                 port: int = 8080, **spec: Any):
        """`spec`: the rest of the pod's cri.Workload (annotations, env, mounts, ...) and its handler."""
        handler = spec.pop("handler", "rewarm")
        super().__init__(address, log_root, cri.Workload(name, image, command, **spec), handler)
        self.port = port

    def get(self, path: str = "/", timeout: float = 5) -> Any:
        body = bundles.http_get(f"/proc/{self.pid()}/ns/net", f"http://127.0.0.1:{self.port}{path}", timeout)
        return json.loads(body) if body else None

    def post(self, path: str, payload: dict[str, Any], timeout: float = 600) -> Any:
        status, body = netns_http.request(f"/proc/{self.pid()}/ns/net", f"http://127.0.0.1:{self.port}{path}",
                                          json.dumps(payload).encode(), timeout)
        return json.loads(body) if status == 200 else None

    def wait_answer(self, timeout: float = 120) -> tuple[Any, float]:
        """The first answer and the seconds from RunPodSandbox to it."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            answer = self.get(timeout=2)
            if answer is not None:
                return answer, time.monotonic() - self.started
            time.sleep(0.05)
        raise TimeoutError(f"pod {self.name} did not answer within {timeout}s; log:\n{self.log()[-2000:]}")
