"""README.md's "## 3. Install on a cluster", run as a user runs it: every ```sh block, in order, in
one bash with `set -euo pipefail`, in a scratch copy of this checkout, with only the edits the README
asks of the user (REGISTRY: their registry; NODE: their node). Real: make-bundle.sh, Podman's build
and its push to a registry (Debian's docker-registry on loopback, plain HTTP, which Podman's own
registries.conf marks insecure; every other registry blocked), the node's pull of the image that the
rendered DaemonSet names (into the node's own image store), and the installer on a throwaway node
(throwaway_node.py), whose containerd then captures a pod and restores a second one. Stand-ins, at
the project's seams: kubectl with the cluster behind it (kube_stand_in.py: no API server nor kubectl
>= 1.21 here) and the API server the node agent talks to (api_server_stand_in.py). Then README
section 7's uninstall gives the node its containerd config back byte for byte.

The fast tests run the kubectl steps alone: in README's order they pass; with the Secret before its
namespace, or with an image that was not pushed, or an overlay that names another image, they fail
as a cluster would.

The end-to-end test is long: 70 to 90 s on a 2-core machine (the bundle, the image, the node, two
pods, the uninstall); CI runs it with the rest of the suite. The others take a second or two."""
from __future__ import annotations

import base64
import contextlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import urllib.request
from dataclasses import dataclass
from typing import Iterator

import pytest

from api_server_stand_in import StandInApiServer
import kube_stand_in
from kube_stand_in import Cluster, Failed, Kubelet, NodeSpec, init_cluster, tear_down
from registry_fixtures import free_port
from runtime.lab.registry_lab import REGISTRY_BINARY, make_tls
from runtime.lab.runc_lab import CHECKOUT
from runtime.model.settings import Settings
from throwaway_node import HANDLER_LINE, ThrowawayNode, poll, restored_pod, with_systemctl

SECTION = "## 3. Install on a cluster"
STAND_INS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "stand_ins")   # kubectl's stand-in
NODE = "node-a"
NAMESPACE, DAEMONSET, SECRET = "rewarm-system", "rewarm-node-installer", "rewarm-fingerprint-key"
MANIFESTS = ("application/vnd.oci.image.manifest.v1+json", "application/vnd.docker.distribution.manifest.v2+json")
# README section 7: "Set UNINSTALL=1 in the DaemonSet's environment and wait for its rollout".
UNINSTALL = (f"kubectl -n {NAMESPACE} set env daemonset/{DAEMONSET} UNINSTALL=1\n"
             f"kubectl -n {NAMESPACE} rollout status daemonset/{DAEMONSET} --timeout=5m\n")


# README's blocks, and the user's edits

def install_blocks() -> list[str]:
    """The ```sh blocks of README's install section, in order."""
    with open(os.path.join(CHECKOUT, "README.md")) as f:
        text = f.read()
    start = text.index(f"\n{SECTION}\n")
    end = text.find("\n## ", start + 1)
    blocks = re.findall(r"^```sh\n(.*?)^```$", text[start:end if end > 0 else None], re.M | re.S)
    assert blocks, f"no ```sh block in README's {SECTION!r}"
    return blocks


def as_the_user_edits_them(blocks: list[str], registry: str) -> list[str]:
    """The blocks with what the README tells the user to change: their registry, their node; each
    once, so that a README that moved them fails here rather than running unedited."""
    edits = {r"\bREGISTRY=registry\.example\.com(?=\s)": f"REGISTRY={registry}",
             r"\bkubectl label node NODE(?=\s)": f"kubectl label node {NODE}"}
    joined = "\0".join(blocks)
    for pattern, replacement in edits.items():
        joined, count = re.subn(pattern, replacement, joined)
        assert count == 1, f"README's install section should have {pattern!r} once, has it {count} times"
    return joined.split("\0")


def commands(block: str) -> list[str]:
    """A block's commands, comments left out: continued lines joined to theirs, a here-document
    kept with its command."""
    lines, found, i = block.splitlines(), [], 0
    while i < len(lines):
        command, i = [lines[i]], i + 1
        if not command[0].strip() or command[0].lstrip().startswith("#"):
            continue
        while command[-1].endswith("\\") and i < len(lines):
            command, i = [*command, lines[i]], i + 1
        heredoc = re.search(r"<<-?\s*['\"]?(\w+)", "\n".join(command))
        while heredoc and i < len(lines):
            command, i = [*command, lines[i]], i + 1
            if command[-1].strip() == heredoc.group(1):
                break
        found.append("\n".join(command))
    return found


def script(blocks: list[str]) -> str:
    """One bash for all blocks (later ones use the variables of the first), each announced."""
    return "set -euo pipefail\n" + "".join(f"echo '+ README install block {n}' >&2\n{block}"
                                           for n, block in enumerate(blocks, 1))


@dataclass
class Site:
    """Where the user runs the blocks: a checkout, a cluster (kubectl's stand-in), a registry."""
    checkout: str
    state: str
    registries_conf: str

    def bash(self, text: str, timeout: float = 900) -> subprocess.CompletedProcess[str]:
        env = {**os.environ, "PATH": f"{STAND_INS}:{os.environ['PATH']}", "KUBE_STAND_IN_STATE": self.state,
               "KUBE_STAND_IN_PYTHON": sys.executable, "CONTAINERS_REGISTRIES_CONF": self.registries_conf}
        return subprocess.run(["bash", "-c", text], cwd=self.checkout, env=env, capture_output=True, text=True,
                              timeout=timeout)


def labels(cluster: Cluster) -> dict[str, str]:
    """The node's labels as kubectl set them (the agent's are the API server stand-in's)."""
    node = cluster.get("Node", "", NODE)
    assert node is not None
    return node["metadata"].get("labels", {})  # type: ignore[no-any-return]


def said(out: subprocess.CompletedProcess[str]) -> str:
    return f"exit {out.returncode}\n--- stdout:\n{out.stdout[-6000:]}\n--- stderr:\n{out.stderr[-6000:]}"


# A registry of the test's own

@dataclass
class Registry:
    address: str
    registries_conf: str


@pytest.fixture
def registry() -> Iterator[Registry]:
    """Debian's docker-registry on 127.0.0.1, plain HTTP, and a registries.conf for Podman (as
    CONTAINERS_REGISTRIES_CONF) that marks it insecure and blocks every other registry, the
    README's placeholder's included. At the end: the registry, and the images named after it."""
    top = tempfile.mkdtemp(prefix="rewarm-readme-registry-")
    address = f"127.0.0.1:{free_port()}"
    with open(os.path.join(top, "config.yml"), "w") as f:
        json.dump({"version": 0.1, "log": {"level": "warn"}, "http": {"addr": address},
                   "storage": {"filesystem": {"rootdirectory": os.path.join(top, "data")}}}, f)   # JSON is YAML
    conf = os.path.join(top, "registries.conf")
    with open(conf, "w") as f:
        f.write(f'unqualified-search-registries = []\n[[registry]]\nlocation = "{address}"\ninsecure = true\n'
                f'[[registry]]\nlocation = "registry.example.com"\nblocked = true\n')
    log = open(os.path.join(top, "registry.log"), "w")
    process = subprocess.Popen([REGISTRY_BINARY, "serve", os.path.join(top, "config.yml")], stdout=log,
                               stderr=subprocess.STDOUT, start_new_session=True)
    try:
        def answers() -> bool:
            assert process.poll() is None, f"the registry ended: {open(log.name).read()}"
            with contextlib.suppress(OSError):
                return bool(urllib.request.urlopen(f"http://{address}/v2/", timeout=2).status == 200)
            return False
        poll("the registry", answers, timeout=30)
        yield Registry(address, conf)
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        log.close()
        images = subprocess.run(["podman", "images", "--format", "{{.Repository}}:{{.Tag}}"], capture_output=True,
                                text=True).stdout.split()
        for image in (i for i in images if i.startswith(f"{address}/")):   # the README's build tagged it so
            subprocess.run(["podman", "rmi", "-f", image], capture_output=True)
        shutil.rmtree(top, ignore_errors=True)


def scratch_checkout(dest: str) -> None:
    """This checkout as it is now, as git sees it (tracked files and new ones it does not ignore),
    without .git, the venv or build outputs: what the user's steps write lands here."""
    listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=CHECKOUT,
                            capture_output=True, check=True).stdout.split(b"\0")
    for rel in map(os.fsdecode, filter(None, listed)):
        source = os.path.join(CHECKOUT, rel)
        if os.path.islink(source) or os.path.isfile(source):   # a file deleted in the work tree stays so
            os.makedirs(os.path.dirname(os.path.join(dest, rel)), exist_ok=True)
            shutil.copy2(source, os.path.join(dest, rel), follow_symlinks=False)


# The fast tests: the kubectl steps alone, on a cluster whose node is never reached

@pytest.fixture
def site(tmp_path, registry: Registry) -> Iterator[Site]:
    """A cluster of one node (folders only) whose pods would reach no API server; the checkout
    itself, since these steps write only rewarm-site/ (made in a copy of what it needs)."""
    checkout = tmp_path / "checkout"
    shutil.copytree(os.path.join(CHECKOUT, "packaging", "kubernetes"), checkout / "packaging" / "kubernetes")
    root = {d: str(tmp_path / "node" / d) for d in ("etc", "opt", "usr", "var", "proc")}
    for path in root.values():
        os.makedirs(path)
    (tmp_path / "ca.crt").write_text("")
    state = str(tmp_path / "cluster")
    init_cluster(state, ("127.0.0.1", 1, str(tmp_path / "ca.crt")),
                 {NODE: NodeSpec(root=root, env={}, storage=tempfile.mkdtemp(prefix="rewarm-node-"))})
    try:
        yield Site(str(checkout), state, registry.registries_conf)
    finally:
        tear_down(state)


def kubectl_steps(registry: Registry, wait: bool = False) -> list[str]:
    """The install section's commands but the image's build and push (block 1 gives only its
    variables) and, unless `wait`, the rollout's wait."""
    blocks = [commands(b) for b in as_the_user_edits_them(install_blocks(), registry.address)]
    variables = [c for c in blocks[0] if re.fullmatch(r"([A-Z_]+=\S+ ?)+", c)]
    assert variables, "README's block 1 sets REGISTRY and VERSION"
    return variables + [c for block in blocks[1:] for c in block if wait or " rollout status " not in c]


def test_the_kubectl_steps_in_readmes_order_make_the_cluster_readme_describes(site, registry):
    out = site.bash("set -euo pipefail\n" + "\n".join(kubectl_steps(registry)))
    assert out.returncode == 0, said(out)
    cluster = Cluster(site.state)
    ds = cluster.get("DaemonSet", NAMESPACE, DAEMONSET)
    assert ds and ds["spec"]["template"]["spec"]["containers"][0]["image"] == \
        f"{registry.address}/rewarm/node-installer:0.2.0"
    secret = cluster.get("Secret", NAMESPACE, SECRET)
    assert secret and len(base64.b64decode(secret["data"]["fingerprint.key"])) == 32
    assert cluster.get("RuntimeClass", "", "rewarm") and cluster.get("ConfigMap", NAMESPACE, "rewarm-node-config")
    assert labels(cluster)["rewarm.dev/node"] == "true"


def test_the_secret_before_its_namespace_fails_as_kubectl_does(site, registry):
    """The order matters and the stand-in holds the README to it: block 2's Secret moved before
    the namespace it goes in."""
    steps = kubectl_steps(registry)
    (secret,) = [c for c in steps if " create secret " in c]
    (namespace,) = [c for c in steps if c.startswith("kubectl apply -f ") and "namespace.yaml" in c]
    steps.remove(secret)
    steps.insert(steps.index(namespace), secret)
    out = site.bash("set -euo pipefail\n" + "\n".join(steps))
    assert out.returncode == 1, said(out)
    assert f'error: failed to create secret namespaces "{NAMESPACE}" not found' in out.stderr, said(out)
    assert Cluster(site.state).get("DaemonSet", NAMESPACE, DAEMONSET) is None   # nothing after it ran


def test_an_image_that_was_not_pushed_fails_the_rollout(site, registry):
    out = site.bash("set -euo pipefail\n" + "\n".join(kubectl_steps(registry, wait=True)), timeout=300)
    assert out.returncode == 1, said(out)
    assert f'Failed to pull image "{registry.address}/rewarm/node-installer:0.2.0"' in out.stderr, said(out)
    assert "manifest unknown" in out.stderr, said(out)


def test_an_overlay_that_names_another_image_fails_the_rollout(site, registry):
    """The overlay's `images` entry must name the base's image, or kustomize leaves it as it is."""
    steps = kubectl_steps(registry, wait=True)
    placeholder = "- name: registry.example.com/rewarm/node-installer\n"
    (overlay,) = [i for i, c in enumerate(steps) if placeholder in c]
    steps[overlay] = steps[overlay].replace(placeholder, "- name: registry.example.com/rewarm/installer\n")
    out = site.bash("set -euo pipefail\n" + "\n".join(steps), timeout=300)
    assert out.returncode == 1, said(out)
    assert 'Failed to pull image "registry.example.com/rewarm/node-installer:0.2.0"' in out.stderr, said(out)
    assert "registry registry.example.com is blocked" in out.stderr, said(out)


NAMESPACE_YAML = "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: ns\n"


@pytest.mark.parametrize("kustomization, error", [
    ({"resources": ["ns.yaml"], "foo": 1}, 'unknown field "foo"'),
    ({"resources": ["ns.yaml"], "namespace": "x"}, "kustomize's `namespace` is not done by this stand-in"),
    ({"resources": ["../outside.yaml"]}, "security; file '.*outside.yaml' is not in or below"),
    ({"resources": ["missing.yaml"]}, "no such file or directory"),
    ({"resources": ["ns.yaml", "ns.yaml"]}, "already registered id"),
    ({"resources": ["ns.yaml"], "images": [{"name": "a", "digest": "sha256:00"}]}, "not done by this stand-in"),
])
def test_the_kubectl_stand_in_refuses_what_it_does_not_render(tmp_path, kustomization, error):
    (tmp_path / "site").mkdir()
    (tmp_path / "site" / "ns.yaml").write_text(NAMESPACE_YAML)
    (tmp_path / "outside.yaml").write_text(NAMESPACE_YAML)
    (tmp_path / "site" / "kustomization.yaml").write_text(json.dumps(kustomization))
    with pytest.raises(Failed, match=error):
        kube_stand_in.render(str(tmp_path / "site"))


def test_the_kubectl_stand_in_validates_what_it_applies_and_sets_images_as_kustomize(tmp_path):
    cluster = init_cluster(str(tmp_path / "cluster"), ("127.0.0.1", 1, ""), {})
    with pytest.raises(Failed, match=r"ValidationError\(Namespace.metadata\): .*'nme' was unexpected"):
        kube_stand_in.apply(cluster, [({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "a",
                                                                                            "nme": "b"}}, "x")], "")
    with pytest.raises(Failed, match='error when creating "x": namespaces "elsewhere" not found'):
        kube_stand_in.apply(cluster, [({"apiVersion": "v1", "kind": "ConfigMap",
                                        "metadata": {"name": "a", "namespace": "elsewhere"}}, "x")], "")
    with pytest.raises(Failed, match='no matches for kind "PodMonitor"'):
        kube_stand_in.apply(cluster, [({"apiVersion": "monitoring.coreos.com/v1", "kind": "PodMonitor",
                                        "metadata": {"name": "a"}}, "x")], "")
    with pytest.raises(Failed, match="not done by this stand-in: kubectl get pods"):
        kube_stand_in.run(cluster, ["get", "pods"])
    assert kube_stand_in.split_image("127.0.0.1:5000/rewarm/x:0.2.0@sha256:ab") == \
        ("127.0.0.1:5000/rewarm/x", "0.2.0", "sha256:ab")
    assert kube_stand_in.split_image("127.0.0.1:5000/rewarm/x") == ("127.0.0.1:5000/rewarm/x", "", "")
    entry = {"name": "registry.example.com/r/x", "newName": "127.0.0.1:5000/r/x", "newTag": "1"}
    assert kube_stand_in.set_image("registry.example.com/r/x:0.2.0", entry) == "127.0.0.1:5000/r/x:1"
    assert kube_stand_in.set_image("registry.example.com/r/xy:0.2.0", entry) == "registry.example.com/r/xy:0.2.0"


# End to end

def test_readmes_install_steps_set_up_a_node_that_restores_a_pod_and_its_uninstall_gives_it_back(registry):
    """README's four blocks as they are, then what they should have done: the image pushed and the
    node's pull of it, the node set up and labelled by the agent, the cluster's key on the node,
    and a pod captured and restored through the node's containerd. Then README section 7's
    uninstall: the node's config as it was, byte for byte, and the label off. 70 to 90 s here."""
    top = tempfile.mkdtemp(prefix="rewarm-readme-")   # short: the node's image store is in it
    os.chmod(top, 0o755)   # (what runs on the node reaches its overlays through here)
    node = ThrowawayNode(os.path.join(top, "node"), None, "/", prepare=with_systemctl, own_var=True)
    api = None
    state = os.path.join(top, "cluster")
    try:
        os.makedirs(node.top)
        node.start()
        os.makedirs(os.path.join(top, "tls"))
        ca, cert, key = make_tls(os.path.join(top, "tls"))
        api = StandInApiServer(tls=(cert, key))
        init_cluster(state, ("127.0.0.1", api.port, ca), {NODE: NodeSpec(
            root=node.root_mounts(), env={"HOST_PID": str(node.pid)}, storage=os.path.join(top, "images"))})
        checkout = os.path.join(top, "checkout")
        scratch_checkout(checkout)
        site = Site(checkout, state, registry.registries_conf)
        as_it_was, first_containerd = node.containerd_files(), node.containerd_pid()

        out = site.bash(script(as_the_user_edits_them(install_blocks(), registry.address)))
        assert out.returncode == 0, said(out)

        cluster = Cluster(state)
        (pod,) = Kubelet(cluster, NODE).pods()
        image = f"{registry.address}/rewarm/node-installer:0.2.0"
        assert pod["container"]["image"] == image
        # pushed, and pulled by the node into its own store (the build's store is this machine's)
        manifest = urllib.request.Request(f"http://{registry.address}/v2/rewarm/node-installer/manifests/0.2.0",
                                          method="HEAD", headers={"Accept": ", ".join(MANIFESTS)})
        assert urllib.request.urlopen(manifest, timeout=10).status == 200
        assert subprocess.run([*Kubelet(cluster, NODE).podman, "image", "exists", image]).returncode == 0
        log = Kubelet(cluster, NODE).log(pod)
        assert "rewarm: node set up" in log, log
        assert api.labels()[-1] == {"rewarm.dev/runtime": "ready"}
        assert labels(cluster)["rewarm.dev/node"] == "true"
        assert node.containerd_pid() != first_containerd                 # restarted: its config changed
        assert any(HANDLER_LINE in text for text in node.containerd_files().values())
        secret = cluster.get("Secret", NAMESPACE, SECRET)
        assert secret is not None
        with open(node.host_path(Settings().fingerprint_key_file), "rb") as f:   # the node's, where rewarm reads it
            assert f.read() == base64.b64decode(secret["data"]["fingerprint.key"])

        # The README's ConfigMap names no store: the node's is the default one, on the node.
        with restored_pod(node, node.host_path(Settings().store)) as (answer, restored):
            assert restored["boot_id"] == answer["boot_id"]              # A's memory, not a fresh start
            poll("the Restored event", lambda: "Restored" in api.reasons("inst-b"))
        assert "Captured" in api.reasons("inst-a")

        before_uninstall = node.containerd_pid()
        out = site.bash(UNINSTALL, timeout=600)
        assert out.returncode == 0, said(out)
        assert api.labels()[-1] == {"rewarm.dev/runtime": None}
        assert node.containerd_files() == as_it_was
        assert node.containerd_pid() != before_uninstall
    finally:
        tear_down(state)
        if api:
            api.close()
        node.destroy()
        shutil.rmtree(top, ignore_errors=True)

