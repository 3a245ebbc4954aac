"""A real OCI registry on loopback for the tests and benchmarks: Debian's `docker-registry`
(distribution 2.8) run as a container through testcontainers on a private Docker engine.

- The engine is a dockerd of the lab's own (data root, exec root and socket under the lab's
  directories) with no default bridge and no iptables rules: containers use the host's network
  and nothing is sent anywhere else.
- The registry image is built here, FROM scratch, from the registry binary and the libc files `ldd`
  names; nothing is pulled.
- TLS from a test CA made with openssl, htpasswd (bcrypt) auth, filesystem storage in a directory
  of the lab (so a test can corrupt a blob inside the registry's storage).
"""
from __future__ import annotations

import base64
import contextlib
import json
import os
import shutil
import signal
import ssl
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
import zlib
from typing import Any

from runtime.lab import oci_image
from runtime.container import mounts
from runtime.lab.runc_lab import CHECKOUT

REGISTRY_BINARY = "/usr/bin/docker-registry"
IMAGE = "localhost/rewarm-lab/registry:2.8"
USER, PASSWORD = "rewarm", "lab-password"


class Engine:
    """A private dockerd, started by whoever needs it first; the test session stops it at its end."""

    def __init__(self, base: str = "/var/lib/rewarm-lab", run: str = "/run/rewarm-lab"):
        suffix = f"{zlib.crc32(CHECKOUT.encode()) % 10000:04d}"
        self.root = os.path.join(base, f"docker-{suffix}")
        self.exec_root = os.path.join(run, f"docker-{suffix}")
        self.socket = os.path.join(self.exec_root, "docker.sock")
        self.host = f"unix://{self.socket}"

    def running(self) -> bool:
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            return subprocess.run(["docker", "-H", self.host, "version"], capture_output=True, timeout=20).returncode == 0
        return False

    def start(self, timeout: float = 60) -> "Engine":
        os.environ["DOCKER_HOST"] = self.host   # testcontainers' client reads it
        if self.running():
            return self
        os.makedirs(self.root, exist_ok=True)
        os.makedirs(self.exec_root, exist_ok=True)
        log = open(os.path.join(self.root, "dockerd.log"), "ab")
        subprocess.Popen(["dockerd", "--data-root", os.path.join(self.root, "data"), "--exec-root", self.exec_root,
                          "--pidfile", os.path.join(self.exec_root, "dockerd.pid"), "-H", self.host,
                          "--bridge", "none", "--iptables=false", "--ip6tables=false", "--ip-masq=false"],
                         stdout=log, stderr=log, stdin=subprocess.DEVNULL, start_new_session=True)
        log.close()
        deadline = time.monotonic() + timeout
        while not self.running():
            if time.monotonic() > deadline:
                raise RuntimeError(f"dockerd did not answer within {timeout}s; see {self.root}/dockerd.log")
            time.sleep(0.3)
        return self

    def stop(self, timeout: float = 30) -> None:
        """Stop dockerd (it stops its containers) and unmount what it left under its directories."""
        with contextlib.suppress(OSError, ValueError):
            with open(os.path.join(self.exec_root, "dockerd.pid")) as f:
                pid = int(f.read())
            os.kill(pid, signal.SIGTERM)
            deadline = time.monotonic() + timeout
            while os.path.exists(f"/proc/{pid}") and time.monotonic() < deadline:
                time.sleep(0.1)
        for path in (self.exec_root, self.root):
            mounts.unmount_under(path)


def _openssl(*args: str) -> None:
    subprocess.run(["openssl", *args], check=True, capture_output=True)


def make_tls(directory: str) -> tuple[str, str, str]:
    """A test CA and a server certificate for 127.0.0.1 / localhost signed by it: (ca, cert, key)."""
    ca, ca_key = os.path.join(directory, "ca.crt"), os.path.join(directory, "ca.key")
    cert, key, csr = (os.path.join(directory, n) for n in ("server.crt", "server.key", "server.csr"))
    ext = os.path.join(directory, "san.ext")
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", ca_key, "-out", ca, "-days", "2",
             "-subj", "/CN=rewarm lab test CA")
    _openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", key, "-out", csr, "-subj", "/CN=localhost")
    with open(ext, "w") as f:
        f.write("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    _openssl("x509", "-req", "-in", csr, "-CA", ca, "-CAkey", ca_key, "-CAcreateserial", "-out", cert, "-days", "2",
             "-extfile", ext)
    return ca, cert, key


def build_image(engine: Engine) -> str:
    """The registry image: FROM scratch, the binary and its libc, built by the private engine."""
    from testcontainers.core.image import DockerImage
    with tempfile.TemporaryDirectory() as context:
        for path in [REGISTRY_BINARY, *oci_image.shared_libraries([REGISTRY_BINARY])]:
            target = os.path.join(context, "rootfs", path.lstrip("/"))
            os.makedirs(os.path.dirname(target), exist_ok=True)
            shutil.copy(os.path.realpath(path), target)   # real files: /lib64 is a link on merged /usr
        with open(os.path.join(context, "Dockerfile"), "w") as f:
            f.write("FROM scratch\nCOPY rootfs/ /\nENTRYPOINT [\"/usr/bin/docker-registry\"]\n"
                    "CMD [\"serve\", \"/etc/docker/registry/config.yml\"]\n")
        image = DockerImage(context, tag=IMAGE, clean_up=False)
        image.build()
    return IMAGE


class Registry:
    """One registry container on 127.0.0.1:port, with TLS and a login unless told otherwise."""

    def __init__(self, directory: str, port: int, tls: bool = True, auth: bool = True, engine: Engine | None = None):
        self.directory, self.port, self.tls, self.auth = directory, port, tls, auth
        self.engine = engine or Engine()
        self.data = os.path.join(directory, "data")
        self.config_dir = os.path.join(directory, "config")
        self.ca = ""
        self.container: Any = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def _write_config(self) -> None:
        os.makedirs(self.data, exist_ok=True)
        os.makedirs(self.config_dir, exist_ok=True)
        http: dict[str, Any] = {"addr": self.address}
        config: dict[str, Any] = {"version": 0.1, "log": {"level": "warn"},
                                  "storage": {"filesystem": {"rootdirectory": "/var/lib/registry"},
                                              "delete": {"enabled": True}}, "http": http}
        if self.tls:
            self.ca, _, _ = make_tls(self.config_dir)
            http["tls"] = {"certificate": "/etc/docker/registry/server.crt", "key": "/etc/docker/registry/server.key"}
        if self.auth:
            line = subprocess.run(["htpasswd", "-Bbn", USER, PASSWORD], capture_output=True, text=True,
                                  check=True).stdout.strip()
            with open(os.path.join(self.config_dir, "htpasswd"), "w") as f:
                f.write(line + "\n")
            config["auth"] = {"htpasswd": {"realm": "rewarm-lab", "path": "/etc/docker/registry/htpasswd"}}
        with open(os.path.join(self.config_dir, "config.yml"), "w") as f:
            json.dump(config, f)   # JSON is YAML

    def start(self, timeout: float = 60) -> "Registry":
        from testcontainers.core.config import testcontainers_config
        from testcontainers.core.container import DockerContainer
        testcontainers_config.ryuk_disabled = True   # its reaper image cannot be pulled here; stop() cleans up
        self.engine.start()
        if not self.container:
            self._write_config()
            build_image(self.engine)
        self.container = (DockerContainer(IMAGE)
                          .with_kwargs(network_mode="host")
                          .with_volume_mapping(self.config_dir, "/etc/docker/registry", "ro")
                          .with_volume_mapping(self.data, "/var/lib/registry", "rw"))
        self.container.start()
        self._wait(timeout)
        return self

    def _wait(self, timeout: float) -> None:
        context = ssl.create_default_context(cafile=self.ca) if self.tls else None
        deadline = time.monotonic() + timeout
        while True:
            try:
                urllib.request.urlopen(f"{'https' if self.tls else 'http'}://{self.address}/v2/", timeout=2,
                                       context=context)
                return
            except urllib.error.HTTPError:
                return   # 401: up, asking for a login
            except (urllib.error.URLError, OSError):
                if time.monotonic() > deadline:
                    raise RuntimeError(f"registry on {self.address} did not answer within {timeout}s") from None
                time.sleep(0.2)

    def stop(self) -> None:
        if self.container is not None:
            with contextlib.suppress(Exception):
                self.container.stop()
            self.container = None

    @property
    def credentials(self) -> str:
        """USER:PASSWORD, as skopeo's --src-creds takes them."""
        return f"{USER}:{PASSWORD}"

    def auth_file(self, path: str, password: str = PASSWORD, address: str = "") -> str:
        """A docker-format credentials file for this registry (reached at `address`: a proxy's)."""
        token = base64.b64encode(f"{USER}:{password}".encode()).decode()
        with open(path, "w") as f:
            json.dump({"auths": {address or self.address: {"auth": token}}}, f)
        return path

    def blob_path(self, digest: str) -> str:
        hex_ = digest.split(":", 1)[1]
        return os.path.join(self.data, "docker", "registry", "v2", "blobs", "sha256", hex_[:2], hex_, "data")
