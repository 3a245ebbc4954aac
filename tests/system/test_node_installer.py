"""The node installer image is built from this repo (make-bundle.sh, then Podman's build of
packaging/kubernetes/Containerfile: FROM scratch, the offline bundle and nothing else) and, run as
the DaemonSet runs it (privileged, the host's PID namespace, a node's / at /host), refuses a node it
does not support with one clear line and exits non-zero (so the pod fails, never Ready), and installs
a node (a throwaway one on this machine: throwaway_node.py) whose containerd, 1.6 and 2.x, then
captures and restores a pod through CRI; uninstall gives the node its config back byte for byte.
The API server is a stand-in (api_server_stand_in.py); the agent reaches it over HTTPS with the
pod's ServiceAccount files, as in a cluster."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time

import pytest

from api_server_stand_in import StandInApiServer
from runtime.adapters import logs, store
from runtime.lab.containerd_lab import CONTAINERD_2_BIN
from runtime.lab.registry_lab import make_tls
from runtime.lab.runc_lab import CHECKOUT, WORKER_DIR
from throwaway_node import ThrowawayNode, digest

IMAGE = "localhost/rewarm/node-installer:test"
PODMAN = ["podman", "--runtime", "runc"]
# This machine refuses to raise resource limits (no CAP_SYS_RESOURCE); Podman sets them unless told lower.
LIMITS = ["--ulimit", "nofile=4096:4096", "--ulimit", "nproc=4096:4096"]


@pytest.fixture(scope="module")
def image(tmp_path_factory):
    context = tmp_path_factory.mktemp("installer")
    bundle = context / ".installer-bundle"
    py = "%d.%d" % sys.version_info[:2]
    out = subprocess.run(["bash", os.path.join(CHECKOUT, "packaging/offline/make-bundle.sh"), str(bundle), py],
                         capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, out.stderr[-3000:]
    shutil.copy(os.path.join(CHECKOUT, "packaging/kubernetes/Containerfile"), context / "Containerfile")
    built = subprocess.run([*PODMAN, "build", "-q", "-f", str(context / "Containerfile"), "-t", IMAGE, str(context)],
                           capture_output=True, text=True, timeout=600)
    assert built.returncode == 0, built.stderr[-3000:]
    yield {"bundle": bundle}
    subprocess.run([*PODMAN, "rmi", "-f", IMAGE], capture_output=True)


def installer(host_root: str) -> subprocess.CompletedProcess[str]:
    """As the DaemonSet runs it; the host's namespaces are entered through this test's process (PID 1
    of this machine does not let even root open its namespaces)."""
    return subprocess.run([*PODMAN, "run", "--rm", *LIMITS, "--privileged", "--pid=host", "--network=none",
                           "-e", f"HOST_PID={os.getpid()}", "-v", f"{host_root}:/host", IMAGE],
                          capture_output=True, text=True, timeout=120)


def test_the_image_is_the_bundle_alone(image):
    files = subprocess.run([*PODMAN, "run", "--rm", *LIMITS, "--entrypoint", "/payload/bin/busybox", IMAGE, "find", "/",
                            "-xdev", "-type", "f"], capture_output=True, text=True, timeout=120).stdout.split()
    outside = [f for f in files if not f.startswith(("/payload/", "/etc/hosts", "/etc/resolv.conf", "/etc/hostname",
                                                     "/run/"))]
    assert outside == [] and "/payload/node-install.sh" in files and "/payload/bin/criu" in files
    assert any(f.startswith("/payload/wheels/rewarm-") for f in files)


@pytest.mark.parametrize("layout, line", [
    ({}, "rewarm node-install: no /etc/os-release on the node: unsupported"),
    ({"etc/os-release": "ID=debian\n"}, "rewarm node-install: the kernel lacks checkpoint/restore"),
    ({"etc/os-release": "ID=debian\n", "proc/sys/kernel/ns_last_pid": "1\n"},
     "rewarm node-install: neither containerd nor CRI-O runs on the node"),
])
def test_an_unsupported_node_is_refused_with_one_line_and_the_pod_fails(image, tmp_path, layout, line):
    for rel, text in layout.items():
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text(text)
    out = installer(str(tmp_path))
    assert out.returncode == 1, out
    assert out.stderr.strip().splitlines()[-1].startswith(line), out.stderr
    assert not (tmp_path / "opt").exists() and not (tmp_path / "etc" / "rewarm").exists()   # nothing written


# The installer, as the DaemonSet's pod, against a throwaway node.
WORKER_IMAGE = "localhost/rewarm/warm-worker:installed-node"
COMMAND = ["/usr/bin/python3", "/app/worker.py"]
ANNOTATIONS = {"rewarm.dev/snapshot": "installed", "rewarm.dev/capture": "on-ready"}


def wait_for(what: str, predicate, timeout: float = 120, logs_of: str = ""):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not (found := predicate()):
        if logs_of and subprocess.run([*PODMAN, "inspect", "-f", "{{.State.Running}}", logs_of], capture_output=True,
                                      text=True).stdout.strip() != "true":
            raise AssertionError(f"the installer pod ended while waiting for {what}: {pod_log(logs_of)}")
        assert time.monotonic() < deadline, f"timed out waiting for {what}: {pod_log(logs_of) if logs_of else ''}"
        time.sleep(0.2)
    return found


def pod_log(name: str) -> str:
    out = subprocess.run([*PODMAN, "logs", name], capture_output=True, text=True)
    return (out.stdout + out.stderr)[-4000:]


class InstallerPod:
    """The DaemonSet's pod: privileged, the host's PID namespace and network, the node's / at /host
    (here its overlays and its containerd's run dir), the ConfigMap at /config, the ServiceAccount's
    files where the kubelet puts them, NODE_NAME and the API server's address in the environment."""

    def __init__(self, node: ThrowawayNode, api: StandInApiServer, secrets: str, configmap: str):
        self.node, self.api, self.secrets, self.configmap = node, api, secrets, configmap
        self.name = f"rewarm-installer-{os.getpid()}"

    def run(self, **env: str) -> str:
        self.remove()
        volumes = [f"{self.node.merged[d]}:/host/{d}" for d in ("etc", "opt", "usr")] + [
            "/proc:/host/proc", f"{self.node.lab.state}:/host/run/containerd", f"{self.configmap}:/config:ro",
            f"{self.secrets}:/var/run/secrets/kubernetes.io/serviceaccount:ro"]
        environment = {"HOST_PID": str(self.node.pid), "NODE_NAME": "node-a",
                       "RUNTIME_RESTART": self.node.restart_script, "KUBERNETES_SERVICE_HOST": "127.0.0.1",
                       "KUBERNETES_SERVICE_PORT": str(self.api.port), **env}
        started = subprocess.run([*PODMAN, "run", "-d", "--name", self.name, *LIMITS, "--privileged", "--pid=host",
                                  "--network=host", *(a for v in volumes for a in ("-v", v)),
                                  *(a for k, v in environment.items() for a in ("-e", f"{k}={v}")), IMAGE],
                                 capture_output=True, text=True, timeout=120)
        assert started.returncode == 0, started.stderr
        return self.name

    def remove(self) -> None:
        subprocess.run([*PODMAN, "rm", "-f", "-t", "5", self.name], capture_output=True, timeout=120)


@pytest.fixture(params=[pytest.param(None, id="containerd-distro"), pytest.param(CONTAINERD_2_BIN, id="containerd-2")])
def installed_node(request, image, tmp_path):
    top = tmp_path / "node"
    top.mkdir()
    os.chmod(tmp_path, 0o755)
    node = ThrowawayNode(str(top), request.param)
    api = None
    try:
        node.start()
        (tmp_path / "tls").mkdir()
        ca, cert, key = make_tls(str(tmp_path / "tls"))
        api = StandInApiServer(tls=(cert, key))
        secrets = tmp_path / "serviceaccount"
        secrets.mkdir()
        shutil.copy(ca, secrets / "ca.crt")
        (secrets / "token").write_text("stand-in-token")
        (secrets / "namespace").write_text("rewarm-system")
        configmap = tmp_path / "configmap"
        configmap.mkdir()
        state = tmp_path / "rewarm-state"    # the cluster's settings for the node: its store and event log
        (configmap / "config.json").write_text(json.dumps({"store": str(state / "store"),
                                                           "event_log": str(state / "events.jsonl"),
                                                           "metrics_file": ""}))
        yield {"node": node, "api": api, "pod": InstallerPod(node, api, str(secrets), str(configmap)),
               "store": str(state / "store"), "event_log": str(state / "events.jsonl")}
    finally:
        subprocess.run([*PODMAN, "rm", "-f", "-t", "5", f"rewarm-installer-{os.getpid()}"], capture_output=True)
        if api:
            api.server.shutdown()
        node.destroy()


def test_the_installer_sets_up_a_node_whose_containerd_restores_a_pod_and_uninstall_gives_it_back(installed_node):
    node, api, pod = installed_node["node"], installed_node["api"], installed_node["pod"]
    binaries = {p: digest(p) for p in (shutil.which(node.lab.tool("containerd")) or "", shutil.which("runc") or "",
                                       "/var/lib/dpkg/status")}
    first_containerd = node.containerd_pid()

    name = pod.run()
    wait_for("the node set up", lambda: "rewarm: node set up" in pod_log(name), timeout=300, logs_of=name)
    assert wait_for("the node label", lambda: {"rewarm.dev/runtime": "ready"} in api.labels(), logs_of=name)
    assert node.containerd_pid() != first_containerd                 # restarted: its config changed
    config = node.config_text()
    assert "rewarm" in config and "/opt/rewarm/bin/rewarm-runc" in config
    # What the install changed on the node: rewarm's files and containerd's config, nothing else:
    # no package manager ran, no containerd or runc binary changed.
    assert node.written("usr") == set()
    assert node.written("etc") == {"containerd/config.toml", "containerd/config.toml.rewarm-backup"} | {
        f for f in node.written("etc") if f.startswith("rewarm/")}
    assert node.written("opt") and all(f.startswith("rewarm/") for f in node.written("opt"))
    assert not any(f.startswith("rewarm/containerd-sid/") for f in node.written("opt"))
    assert {p: digest(p) for p in binaries} == binaries

    # A pod through CRI: captured on ready, then a second one restored from it, with A's warm state.
    node.lab.build_worker_image(WORKER_IMAGE, WORKER_DIR, [])
    a = node.lab.pod("inst-a", WORKER_IMAGE, COMMAND, annotations=ANNOTATIONS, env={"WARM_SECONDS": "2", "PORT": "8080"})
    try:
        answer, _ = a.wait_answer()
        wait_for("the snapshot", lambda: store.Store(installed_node["store"]).entries("default", "installed"))
    finally:
        a.delete()
    b = node.lab.pod("inst-b", WORKER_IMAGE, COMMAND, annotations=ANNOTATIONS, env={"WARM_SECONDS": "2", "PORT": "8080"})
    try:
        restored, _ = b.wait_answer(timeout=60)
        assert restored["boot_id"] == answer["boot_id"]              # A's memory, not a fresh start
        kinds = {(e["event"], e.get("pod")) for e in logs.read_events(installed_node["event_log"])}
        assert ("captured", "inst-a") in kinds and ("restored", "inst-b") in kinds, kinds
        # the agent of the installer pod made them Kubernetes Events on the pods
        wait_for("the Restored event", lambda: "Restored" in api.reasons("inst-b"), logs_of=name)
        assert "Captured" in api.reasons("inst-a")
    finally:
        b.delete()

    # Uninstall: the handler out, the label off, containerd's config as it was, byte for byte.
    pod.remove()
    before_uninstall = node.containerd_pid()
    name = pod.run(UNINSTALL="1")
    wait_for("the label off", lambda: {"rewarm.dev/runtime": None} in api.labels(), logs_of=name)
    assert node.config_text() == node.original_config
    assert node.containerd_pid() != before_uninstall
    assert {p: digest(p) for p in binaries} == binaries and node.written("usr") == set()
