"""The node installer image is built from this repo (make-bundle.sh, then Podman's build of
packaging/kubernetes/Containerfile: FROM scratch, the offline bundle and nothing else) and, run as
the DaemonSet runs it (privileged, the host's PID namespace, a node's / at /host), refuses a node it
does not support with one clear line and exits non-zero (so the pod fails, never Ready), and installs
a node (a throwaway one on this machine: throwaway_node.py) whose containerd, 1.6 and 2.x, then
captures and restores a pod through CRI; uninstall gives the node its config back byte for byte.
One node's userland is Debian 11's (glibc 2.31, no python3): the bundle brings its own interpreter,
C library and shell, and runs there as on this machine's. A failed install takes the node's ready
label off before the pod fails. The API server is a stand-in (api_server_stand_in.py); the agent
reaches it over HTTPS with the pod's ServiceAccount files, as in a cluster."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import time

import pytest
import tomlkit

from api_server_stand_in import StandInApiServer
from runtime.observe import logs
from runtime.lab.containerd_lab import CONTAINERD_2_BIN
from runtime.lab.registry_lab import make_tls
from runtime.lab.runc_lab import CHECKOUT
from throwaway_node import HANDLER_LINE, ThrowawayNode, debian11_userland, digest, restored_pod

IMAGE = f"localhost/rewarm/node-installer:test-{os.getpid()}"   # this run's own: another run removes its image
PODMAN = ["podman", "--runtime", "runc"]
# This machine refuses to raise resource limits (no CAP_SYS_RESOURCE); Podman sets them unless told lower.
LIMITS = ["--ulimit", "nofile=4096:4096", "--ulimit", "nproc=4096:4096"]


@pytest.fixture(scope="module")
def image(tmp_path_factory):
    context = tmp_path_factory.mktemp("installer")
    bundle = context / ".installer-bundle"
    out = subprocess.run(["bash", os.path.join(CHECKOUT, "packaging/offline/make-bundle.sh"), str(bundle)],
                         capture_output=True, text=True, timeout=1200)
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
                            "-xdev", "-type", "f"], capture_output=True, text=True, timeout=120).stdout.splitlines()
    outside = [f for f in files if not f.startswith(("/payload/", "/etc/hosts", "/etc/resolv.conf", "/etc/hostname",
                                                     "/run/"))]
    assert outside == [] and "/payload/node-install.sh" in files and "/payload/bin/criu" in files
    # its own interpreter with rewarm installed for it, its own C library and loader, its own shell
    assert {"/payload/bin/python3", "/payload/lib/python3/dist-packages/runtime/cli/main.py", "/payload/lib/libc.so.6",
            "/payload/lib/ld-linux-x86-64.so.2", "/payload/bin/busybox"} <= set(files)


@pytest.mark.parametrize("layout, line", [
    ({}, "rewarm node-install: no /etc/os-release on the node: unsupported"),
    ({"etc/os-release": "ID=debian\n"}, "rewarm node-install: the kernel lacks checkpoint/restore"),
    ({"etc/os-release": "ID=debian\n", "proc/sys/kernel/ns_last_pid": "1\n"},
     "rewarm node-install: no containerd (plain, k3s, RKE2, k0s) nor CRI-O runs on the node"),
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

    def run(self, validations: str = "", **env: str) -> str:
        """`validations`: the host's /run/nvidia/validations, where NVIDIA's GPU Operator runs."""
        self.remove()
        volumes = [f"{source}:/host/{d}" for d, source in self.node.root_mounts().items()] + [
            f"{self.configmap}:/config:ro", f"{self.secrets}:/var/run/secrets/kubernetes.io/serviceaccount:ro"] + (
            [f"{validations}:/host/run/nvidia/validations"] if validations else [])
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

    def exit_code(self) -> int | None:
        """None while it runs."""
        out = subprocess.run([*PODMAN, "inspect", "-f", "{{.State.Running}} {{.State.ExitCode}}", self.name],
                             capture_output=True, text=True, check=True).stdout.split()
        return None if out[0] == "true" else int(out[1])


NVIDIA_RUNTIME = "/usr/local/nvidia/toolkit/nvidia-container-runtime"   # where the GPU Operator's toolkit puts it
CRI = "io.containerd.grpc.v1.cri"


def nvidia_toolkit(node: ThrowawayNode) -> None:
    """The node as NVIDIA's GPU Operator leaves it under containerd 1.x: config.toml imports
    conf.d/*.toml, whose 99-nvidia.toml holds the whole CRI table (containerd 1.x keeps the last one)
    with `nvidia` the default handler. Its nvidia-container-runtime is a stand-in that records each
    call and then runs runc, as the real one does once it has given the container its GPUs."""
    etc = os.path.join(node.merged["etc"], "containerd")
    with open(os.path.join(etc, "config.toml")) as f:
        text = f.read()
    cri = tomlkit.parse(text)["plugins"][CRI]
    nvidia = cri["containerd"]["runtimes"]["runc"].unwrap()
    nvidia["options"]["BinaryName"] = NVIDIA_RUNTIME
    cri["containerd"]["runtimes"]["nvidia"] = nvidia
    cri["containerd"]["default_runtime_name"] = "nvidia"
    dropin = tomlkit.document()
    dropin.add("version", 2)
    dropin.add("plugins", tomlkit.table(is_super_table=True))
    dropin["plugins"].add(CRI, cri)
    os.makedirs(os.path.join(etc, "conf.d"))
    with open(os.path.join(etc, "conf.d", "99-nvidia.toml"), "w") as f:
        f.write(tomlkit.dumps(dropin))
    config = tomlkit.parse(text)
    config["imports"] = ["/etc/containerd/conf.d/*.toml"]
    with open(os.path.join(etc, "config.toml"), "w") as f:
        f.write(tomlkit.dumps(config))
    stand_in = os.path.join(node.merged["usr"], os.path.relpath(NVIDIA_RUNTIME, "/usr"))
    os.makedirs(os.path.dirname(stand_in))
    with open(stand_in, "w") as f:
        f.write(f"#!/bin/sh\n# nvidia-container-runtime's stand-in: the call recorded, then runc\n"
                f"echo \"$*\" >> {nvidia_calls(node)}\nexec runc \"$@\"\n")
    os.chmod(stand_in, 0o755)


def nvidia_calls(node: ThrowawayNode) -> str:
    return os.path.join(node.top, "nvidia-container-runtime.calls")


# Each node: its containerd (None: the distribution's), its userland, what else it has.
NODES = {"containerd-distro": (None, "/", None), "containerd-2": (CONTAINERD_2_BIN, "/", None),
         "debian-11": (None, "debian11", None), "nvidia-dropin": (None, "/", nvidia_toolkit)}


@pytest.fixture(params=list(NODES))
def installed_node(request, image, tmp_path):
    bin_dir, userland, prepare = NODES[request.param]
    top = tmp_path / "node"
    top.mkdir()
    os.chmod(tmp_path, 0o755)
    node = ThrowawayNode(str(top), bin_dir, debian11_userland() if userland == "debian11" else userland, prepare)
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
               "store": str(state / "store"), "event_log": str(state / "events.jsonl"), "kind": request.param}
    finally:
        subprocess.run([*PODMAN, "rm", "-f", "-t", "5", f"rewarm-installer-{os.getpid()}"], capture_output=True)
        if api:
            api.server.shutdown()
        node.destroy()


def only_rewarms(node: ThrowawayNode) -> None:
    """What the node shows written: rewarm's own paths and containerd's config, nothing else."""
    assert node.written("usr") == set()
    assert {f for f in node.written("etc") if not f.startswith("containerd/")} == {
        f for f in node.written("etc") if f.startswith("rewarm/")}
    assert all(f.startswith("rewarm/") for f in node.written("opt"))
    assert not any(f.startswith("rewarm/containerd-sid/") for f in node.written("opt"))


def test_the_installer_sets_up_a_node_whose_containerd_restores_a_pod_and_uninstall_gives_it_back(installed_node):
    node, api, pod, kind = installed_node["node"], installed_node["api"], installed_node["pod"], installed_node["kind"]
    runc = os.path.join(node.merged["usr"], "sbin", "runc")   # the node's own, which rewarm leaves alone
    binaries = {p: digest(p) for p in (node.containerd_binary, runc, "/var/lib/dpkg/status")}
    if kind == "debian-11":   # nothing of this userland could run rewarm's Python or binaries
        assert not os.path.exists(os.path.join(node.merged["usr"], "bin", "python3"))
        assert os.path.exists(os.path.join(node.merged["usr"], "lib/x86_64-linux-gnu/libc-2.31.so"))
    as_it_was = node.containerd_files()
    first_containerd = node.containerd_pid()

    name = installed(pod, api)
    assert node.containerd_pid() != first_containerd                 # restarted: its config changed
    assert any(HANDLER_LINE in text for text in node.containerd_files().values())
    # What the install changed on the node: rewarm's files and containerd's config, nothing else:
    # no package manager ran, no containerd or runc binary changed.
    only_rewarms(node)
    assert {p: digest(p) for p in binaries} == binaries
    # The front door as installed runs on the bundle's static busybox sh, runc and CRIU on its loader.
    with open(node.host_path("/opt/rewarm/bin/rewarm-runc")) as f:
        shebang = f.readline().split()
    assert shebang[0].startswith("#!/opt/rewarm/bundle-") and shebang[0].endswith("/bin/sh")
    assert node.host_path(shebang[0][2:]).endswith("/bin/busybox")
    with open(node.host_path("/etc/rewarm/config.json")) as f:
        rewarm_config = json.load(f)
    # the real runtime: the default handler's (NVIDIA's, chained), else the bundle's runc
    assert rewarm_config["runtime"] == (NVIDIA_RUNTIME if kind == "nvidia-dropin" else "/opt/rewarm/bin/runc")
    for binary in ("runc", "criu"):
        interpreter = subprocess.run(["patchelf", "--print-interpreter", node.host_path(f"/opt/rewarm/bin/{binary}")],
                                     capture_output=True, text=True, check=True).stdout.strip()
        assert interpreter.startswith("/opt/rewarm/bundle-") and interpreter.endswith("/lib/ld-linux-x86-64.so.2")

    # A pod through CRI: captured on ready, then a second one restored from it, with A's warm state.
    # Through the bundle's runc (its `init` re-executes itself from a copy) and CRIU (`criu swrk`).
    with restored_pod(node, installed_node["store"]) as (answer, restored):
        assert restored["boot_id"] == answer["boot_id"]              # A's memory, not a fresh start
        kinds = {(e["event"], e.get("pod")) for e in logs.read_events(installed_node["event_log"])}
        assert ("captured", "inst-a") in kinds and ("restored", "inst-b") in kinds, kinds
        # the agent of the installer pod made them Kubernetes Events on the pods
        wait_for("the Restored event", lambda: "Restored" in api.reasons("inst-b"), logs_of=name)
        assert "Captured" in api.reasons("inst-a")
    if kind == "nvidia-dropin":   # every container, its checkpoint and its restore went through NVIDIA's runtime
        with open(nvidia_calls(node)) as f:
            verbs = {word for line in f for word in line.split()}
        assert {"create", "start", "checkpoint", "restore", "delete"} <= verbs, verbs

    # Uninstall: the handler out, the label off, containerd's config files as they were, byte for byte.
    pod.remove()
    before_uninstall = node.containerd_pid()
    name = pod.run(UNINSTALL="1")
    wait_for("the label off", lambda: {"rewarm.dev/runtime": None} in api.labels(), logs_of=name)
    assert node.containerd_files() == as_it_was
    assert node.containerd_pid() != before_uninstall
    assert {p: digest(p) for p in binaries} == binaries
    only_rewarms(node)


def installed(pod: InstallerPod, api: StandInApiServer, **env: str) -> str:
    name = pod.run(**env)
    wait_for("the node set up", lambda: "rewarm: node set up" in pod_log(name), timeout=300, logs_of=name)
    wait_for("the node label", lambda: {"rewarm.dev/runtime": "ready"} in api.labels(), logs_of=name)
    return name


def failed(pod: InstallerPod, name: str) -> str:
    """The installer pod's last line, once it ended with 1."""
    wait_for("the installer pod to end", lambda: pod.exit_code() is not None, timeout=300)
    assert pod.exit_code() == 1, pod_log(name)
    return pod_log(name).strip().splitlines()[-1]


@pytest.mark.parametrize("installed_node", ["debian-11"], indirect=True)
def test_a_failed_install_takes_the_ready_label_off_before_the_pod_fails(installed_node):
    """A node set up and labelled ready; a later start of the installer fails (here `rewarm doctor`:
    a file stands where the snapshot store should be): the label comes off before the pod fails, so
    that no rewarm pod is scheduled to a node whose rewarm is not known to work."""
    api, pod = installed_node["api"], installed_node["pod"]
    installed(pod, api)
    pod.remove()
    shutil.rmtree(installed_node["store"])   # (the first install made it)
    with open(installed_node["store"], "w") as f:
        f.write("not a store")
    name = pod.run()
    assert failed(pod, name) == "rewarm node-install: rewarm doctor found a failing check (above)"
    assert api.labels() == [{"rewarm.dev/runtime": "ready"}, {"rewarm.dev/runtime": None}]


@pytest.mark.parametrize("installed_node", ["containerd-distro"], indirect=True)
def test_the_installer_waits_for_the_gpu_operators_toolkit_before_it_reads_the_runtime_config(installed_node, tmp_path):
    """Where NVIDIA's GPU Operator runs (its validator's /run/nvidia/validations), its container
    toolkit rewrites the runtime's config, then writes toolkit-ready: rewarm waits for that, a bounded
    time, and then installs."""
    node, api, pod = installed_node["node"], installed_node["api"], installed_node["pod"]
    validations = tmp_path / "validations"
    validations.mkdir()
    name = pod.run(validations=str(validations), GPU_OPERATOR_WAIT_S="1")
    assert failed(pod, name).startswith("rewarm node-install: the GPU Operator's container toolkit was not ready after 1s")
    assert node.config_text() == node.original_config and api.labels() == []

    name = pod.run(validations=str(validations))
    wait_for("the wait", lambda: "waiting for NVIDIA's container toolkit" in pod_log(name), logs_of=name)
    assert node.config_text() == node.original_config                # nothing read or written meanwhile
    (validations / "toolkit-ready").write_text("")
    wait_for("the node set up", lambda: "rewarm: node set up" in pod_log(name), timeout=300, logs_of=name)
    assert "/opt/rewarm/bin/rewarm-runc" in node.config_text()
