"""A stand-in for kubectl and the cluster behind it (the API server's objects, the DaemonSet
controller, each node's kubelet), for running README.md's install steps where no cluster can run
(tests/system/test_readme_install.py). Named as what it is: it does what those steps need, strictly,
with kubectl's words where kubectl would fail, and refuses anything else.

  kubectl apply -f FILE          FILE's objects, each validated against Kubernetes 1.30's schemas
  kubectl apply -k DIR           DIR's kustomization rendered (resources: files in or below DIR, or
                                 folders with a kustomization of their own; images: name, newName,
                                 newTag), then applied as by -f
  kubectl -n NS create secret generic NAME --from-file=KEY=PATH
  kubectl label node NODE KEY=VALUE
  kubectl -n NS set env daemonset/NAME KEY=VALUE          (README's uninstall: UNINSTALL=1)
  kubectl -n NS rollout status daemonset/NAME --timeout=DURATION

Objects are JSON files in a state folder ($KUBE_STAND_IN_STATE) that the test makes with
init_cluster(): the cluster's nodes and how pods reach the API server stand-in
(api_server_stand_in.py, which the agent in the pod talks to). A namespaced object needs its
namespace first.

`rollout status` does what the DaemonSet controller and the kubelets would: on each node the
DaemonSet selects, a pod of its template (a new one when the template changed), run by Podman in
the node's own image store, so that its image is pulled from the registry as its imagePullPolicy
says; privileged and in the host's PID namespace as its spec says; its env with fieldRefs resolved;
its volumes (ConfigMap and Secret data as files, hostPath / as the node's root); the
ServiceAccount's files where the kubelet puts them. It is Ready when its readinessProbe answers.
Where this differs from a cluster: the pod shares this machine's network (the API server stand-in
listens on its loopback); the node's own env is added (HOST_PID: the node is a mount namespace of
this machine whose init is a process of the test); and a pod that cannot start, or whose container
ends, fails the wait at once with its log instead of after the timeout of a back-off.
"""
from __future__ import annotations

import base64
import contextlib
import fcntl
import hashlib
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import asdict, dataclass
from typing import Any, Iterator

import kubernetes_validate
import yaml

KUBERNETES = "1.30.0"
STATE_ENV = "KUBE_STAND_IN_STATE"
PODMAN = ["podman", "--runtime", "runc"]
# This machine refuses to raise resource limits (no CAP_SYS_RESOURCE); Podman sets them unless told lower.
LIMITS = ["--ulimit", "nofile=4096:4096", "--ulimit", "nproc=4096:4096"]
SERVICE_ACCOUNT_DIR = "/var/run/secrets/kubernetes.io/serviceaccount"   # where the kubelet mounts it
# The kinds this cluster serves: kind -> (apiVersion, namespaced, resource as kubectl names it).
KINDS = {
    "Namespace": ("v1", False, "namespace"),
    "Node": ("v1", False, "node"),
    "ServiceAccount": ("v1", True, "serviceaccount"),
    "ConfigMap": ("v1", True, "configmap"),
    "Secret": ("v1", True, "secret"),
    "ClusterRole": ("rbac.authorization.k8s.io/v1", False, "clusterrole.rbac.authorization.k8s.io"),
    "ClusterRoleBinding": ("rbac.authorization.k8s.io/v1", False, "clusterrolebinding.rbac.authorization.k8s.io"),
    "Role": ("rbac.authorization.k8s.io/v1", True, "role.rbac.authorization.k8s.io"),
    "RoleBinding": ("rbac.authorization.k8s.io/v1", True, "rolebinding.rbac.authorization.k8s.io"),
    "DaemonSet": ("apps/v1", True, "daemonset.apps"),
    "RuntimeClass": ("node.k8s.io/v1", False, "runtimeclass.node.k8s.io"),
}
# kustomize's own order for what it renders (kubectl applies in it): namespaces before what is in them.
KUSTOMIZE_FIRST = ["Namespace", "ResourceQuota", "StorageClass", "CustomResourceDefinition", "ServiceAccount",
                   "PodSecurityPolicy", "Role", "ClusterRole", "RoleBinding", "ClusterRoleBinding", "ConfigMap",
                   "Secret", "Endpoints", "Service", "LimitRange", "PriorityClass", "PersistentVolume",
                   "PersistentVolumeClaim", "Deployment", "StatefulSet", "CronJob", "PodDisruptionBudget"]
KUSTOMIZE_LAST = ["MutatingWebhookConfiguration", "ValidatingWebhookConfiguration"]
KUSTOMIZATION_FILES = ("kustomization.yaml", "kustomization.yml", "Kustomization")
# kustomize's other fields: real, but not done here (a stand-in that ignored them would lie).
KUSTOMIZE_FIELDS = {"namespace", "namePrefix", "nameSuffix", "commonLabels", "labels", "commonAnnotations",
                    "patches", "patchesStrategicMerge", "patchesJson6902", "configMapGenerator", "secretGenerator",
                    "generatorOptions", "replicas", "components", "crds", "bases", "transformers", "generators",
                    "validators", "openapi", "vars", "replacements", "buildMetadata", "helmCharts", "helmGlobals",
                    "sortOptions", "configurations", "metadata"}
# What of a pod template the kubelet stand-in understands; anything else is refused, not ignored.
POD_FIELDS = {"hostPID", "serviceAccountName", "nodeSelector", "tolerations", "priorityClassName", "containers",
              "volumes"}
CONTAINER_FIELDS = {"name", "image", "imagePullPolicy", "securityContext", "env", "ports", "readinessProbe",
                    "resources", "volumeMounts", "command", "args"}
LABEL_NAME = re.compile(r"^([a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?/)?[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?$")
LABEL_VALUE = re.compile(r"^([A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?)?$")
DURATION = re.compile(r"(\d+(?:\.\d+)?)(h|ms|m|s)")


class Failed(Exception):
    """What kubectl would print before it exits with 1."""


@dataclass(frozen=True)
class NodeSpec:
    """A node of the cluster: its / as a hostPath sees it (folder -> this machine's path), the env
    its pods get besides their own, and the folder of its image store (a short path: Podman's
    runroot is in it)."""
    root: dict[str, str]
    env: dict[str, str]
    storage: str


# The cluster's state

class Cluster:
    def __init__(self, state: str) -> None:
        self.state = state
        with open(os.path.join(state, "cluster.json")) as f:
            self.config: dict[str, Any] = json.load(f)

    def _path(self, kind: str, namespace: str, name: str) -> str:
        return os.path.join(self.state, "objects", kind, namespace or "_", name + ".json")

    def get(self, kind: str, namespace: str, name: str) -> dict[str, Any] | None:
        with contextlib.suppress(FileNotFoundError), open(self._path(kind, namespace, name)) as f:
            return json.load(f)   # type: ignore[no-any-return]
        return None

    def put(self, obj: dict[str, Any]) -> str:
        """Store an object (valid, its namespace there); "created", "configured" or "unchanged"."""
        meta = obj["metadata"]
        path = self._path(obj["kind"], meta.get("namespace", ""), meta["name"])
        old = self.get(obj["kind"], meta.get("namespace", ""), meta["name"])
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path + ".new", "w") as f:
            json.dump(obj, f, indent=1, sort_keys=True)
        os.rename(path + ".new", path)
        return "created" if old is None else "unchanged" if old == obj else "configured"

    def all(self, kind: str) -> list[dict[str, Any]]:
        found = []
        for dirpath, _, names in os.walk(os.path.join(self.state, "objects", kind)):
            for name in sorted(names):
                with open(os.path.join(dirpath, name)) as f:
                    found.append(json.load(f))
        return found

    def nodes(self) -> dict[str, NodeSpec]:
        return {name: NodeSpec(**spec) for name, spec in self.config["nodes"].items()}

    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        """One kubectl at a time changes the state (as the API server serialises writes)."""
        with open(os.path.join(self.state, "lock"), "w") as f:
            fcntl.flock(f, fcntl.LOCK_EX)
            yield


def init_cluster(state: str, api: tuple[str, int, str], nodes: dict[str, NodeSpec],
                 pod_security: str = "baseline") -> Cluster:
    """A new cluster in `state`: its nodes, the API server its pods reach (host, port, its CA file),
    the Pod Security level namespaces get unless their label says otherwise, and the namespaces
    every cluster has."""
    os.makedirs(state, exist_ok=True)
    host, port, ca = api
    with open(os.path.join(state, "cluster.json"), "w") as f:
        json.dump({"api_server": {"host": host, "port": port, "ca": ca}, "pod_security": pod_security,
                   "nodes": {name: asdict(spec) for name, spec in nodes.items()}}, f)
    cluster = Cluster(state)
    for name in ("default", "kube-system", "kube-public", "kube-node-lease"):
        cluster.put({"apiVersion": "v1", "kind": "Namespace",
                     "metadata": {"name": name, "labels": {"kubernetes.io/metadata.name": name}}})
    for name in nodes:
        cluster.put(validated({"apiVersion": "v1", "kind": "Node", "metadata": {"name": name, "labels": {
            "kubernetes.io/hostname": name, "kubernetes.io/os": "linux", "kubernetes.io/arch": "amd64"}}}, "node"))
    return cluster


def validated(obj: dict[str, Any], source: str) -> dict[str, Any]:
    """The object, once Kubernetes 1.30's schema for its kind accepts it (unknown fields refused)."""
    if not isinstance(obj, dict) or "kind" not in obj or "apiVersion" not in obj:
        raise Failed(f'error: error validating "{source}": error validating data: apiVersion or kind not set')
    name = (obj.get("metadata") or {}).get("name", "")
    expected = KINDS.get(obj["kind"])
    if expected is None or expected[0] != obj["apiVersion"]:
        raise Failed(f'error: resource mapping not found for name: "{name}" namespace: "" from "{source}": '
                     f'no matches for kind "{obj["kind"]}" in version "{obj["apiVersion"]}"\n'
                     f"ensure CRDs are installed first")
    try:
        kubernetes_validate.validate(obj, KUBERNETES, strict=True)
    except kubernetes_validate.ValidationError as e:
        where = ".".join(str(p) for p in e.path)
        raise Failed(f'error: error validating "{source}": error validating data: '
                     f"ValidationError({obj['kind']}{'.' + where if where else ''}): {e.message}") from None
    if not name:
        raise Failed(f'error: error when retrieving current configuration of "{source}": resource name may not be empty')
    return obj


# kubectl's commands

def apply(cluster: Cluster, objects: list[tuple[dict[str, Any], str]], namespace: str) -> None:
    """Validate every object, then create or update each in turn, as kubectl apply does."""
    for obj, source in objects:
        validated(obj, source)
    errors = []
    for obj, source in objects:
        kind, meta = obj["kind"], obj["metadata"]
        _, namespaced, resource = KINDS[kind]
        if namespaced:
            meta.setdefault("namespace", namespace)
            if cluster.get("Namespace", "", meta["namespace"]) is None:
                errors.append(f'Error from server (NotFound): error when creating "{source}": '
                              f'namespaces "{meta["namespace"]}" not found')
                continue
        elif "namespace" in meta:
            del meta["namespace"]   # as the API server: a cluster-wide object has none
        print(f"{resource}/{meta['name']} {cluster.put(obj)}")
    if errors:
        raise Failed("\n".join(errors))


def documents(path: str) -> list[dict[str, Any]]:
    try:
        with open(path) as f:
            return [d for d in yaml.safe_load_all(f) if d is not None]
    except FileNotFoundError:
        raise Failed(f'error: the path "{path}" does not exist') from None


def render(directory: str) -> list[tuple[dict[str, Any], str]]:
    """What `kubectl apply -k DIRECTORY` applies: its kustomization's resources, each folder one
    rendered in turn, with the images set as it says, in kustomize's order."""
    rendered = _kustomize(os.path.realpath(directory), [])
    first, last = {k: i for i, k in enumerate(KUSTOMIZE_FIRST)}, {k: i for i, k in enumerate(KUSTOMIZE_LAST)}

    def rank(item: tuple[dict[str, Any], str]) -> tuple[int, int, str, str, str]:
        kind, meta = item[0]["kind"], item[0].get("metadata") or {}
        group = (0, first[kind]) if kind in first else (2, last[kind]) if kind in last else (1, 0)
        return (*group, kind, meta.get("namespace", ""), meta.get("name", ""))
    return sorted(rendered, key=rank)


def _kustomize(directory: str, seen: list[str]) -> list[tuple[dict[str, Any], str]]:
    if directory in seen:
        raise Failed(f"error: accumulating resources: cycle detected: {' -> '.join([*seen, directory])}")
    found = [n for n in KUSTOMIZATION_FILES if os.path.isfile(os.path.join(directory, n))]
    if not found:
        raise Failed(f"error: unable to find one of 'kustomization.yaml', 'kustomization.yml' or 'Kustomization' "
                     f"in directory '{directory}'")
    source = os.path.join(directory, found[0])
    (kustomization,) = documents(source) or [{}]
    for key in kustomization:
        if key in KUSTOMIZE_FIELDS:
            raise Failed(f"kubectl (stand-in): {source}: kustomize's `{key}` is not done by this stand-in")
        if key not in ("apiVersion", "kind", "resources", "images"):
            raise Failed(f'error: invalid Kustomization: json: unknown field "{key}"')
    if kustomization.get("apiVersion", "kustomize.config.k8s.io/v1beta1") != "kustomize.config.k8s.io/v1beta1" \
            or kustomization.get("kind", "Kustomization") != "Kustomization":
        raise Failed(f"error: {source}: not a Kustomization of kustomize.config.k8s.io/v1beta1")
    objects: list[tuple[dict[str, Any], str]] = []
    for resource in kustomization.get("resources") or []:
        if not isinstance(resource, str) or "://" in resource:
            raise Failed(f"kubectl (stand-in): {source}: resource {resource!r}: only local files and folders here")
        path = os.path.realpath(os.path.join(directory, resource))
        if os.path.isdir(path):
            objects += _kustomize(path, [*seen, directory])
        elif os.path.isfile(path):
            if os.path.commonpath([path, directory]) != directory:   # kustomize's load restrictor
                raise Failed(f"error: accumulating resources: security; file '{path}' is not in or below "
                             f"'{directory}'")
            objects += [(d, path) for d in documents(path)]
        else:
            raise Failed(f"error: accumulating resources: accumulation err='accumulating resources from "
                         f"'{resource}': open {path}: no such file or directory'")
    ids = [(o.get("kind"), (o.get("metadata") or {}).get("namespace", ""), (o.get("metadata") or {}).get("name"))
           for o, _ in objects]
    for i, ident in enumerate(ids):
        if ident in ids[:i]:
            raise Failed(f"error: accumulating resources: may not add resource with an already registered id: {ident}")
    for entry in kustomization.get("images") or []:
        unknown = set(entry) - {"name", "newName", "newTag"}
        if unknown:
            raise Failed(f"kubectl (stand-in): {source}: images field {sorted(unknown)} is not done by this stand-in")
        if not entry.get("name"):
            raise Failed(f"error: {source}: an images entry needs a name")
        for obj, _ in objects:
            for container in containers_of(obj):
                container["image"] = set_image(container.get("image", ""), entry)
    return objects


def containers_of(obj: dict[str, Any]) -> list[dict[str, Any]]:
    """Where kustomize sets images: a workload's pod template's containers and initContainers."""
    spec = ((obj.get("spec") or {}).get("template") or {}).get("spec") or {}
    return [*spec.get("containers", []), *spec.get("initContainers", [])]


def split_image(image: str) -> tuple[str, str, str]:
    """(name, tag, digest) of an image reference: a registry's :port is no tag."""
    name, _, digest = image.partition("@")
    slash, colon = name.rfind("/"), name.rfind(":")
    return (name[:colon], name[colon + 1:], digest) if colon > slash else (name, "", digest)


def set_image(image: str, entry: dict[str, str]) -> str:
    name, tag, digest = split_image(image)
    if name != entry["name"]:
        return image
    name = entry.get("newName", name)
    if "newTag" in entry:
        tag, digest = str(entry["newTag"]), ""
    return name + (f":{tag}" if tag else "") + (f"@{digest}" if digest else "")


def create_secret(cluster: Cluster, namespace: str, name: str, files: list[str]) -> None:
    data = {}
    for spec in files:
        key, sep, path = spec.partition("=")
        if not sep or not key:
            raise Failed(f"kubectl (stand-in): --from-file={spec}: only KEY=PATH here")
        if not re.fullmatch(r"[-._a-zA-Z0-9]+", key):
            raise Failed(f'error: "{key}" is not a valid key name for a Secret: '
                         f"a valid config key must consist of alphanumeric characters, '-', '_' or '.'")
        try:
            with open(path, "rb") as f:   # a file, or the pipe of bash's <(...)
                data[key] = base64.b64encode(f.read()).decode()
        except OSError as e:
            raise Failed(f"error: open {path}: {(e.strerror or str(e)).lower()}") from None
    if cluster.get("Namespace", "", namespace) is None:
        raise Failed(f'error: failed to create secret namespaces "{namespace}" not found')
    if cluster.get("Secret", namespace, name) is not None:
        raise Failed(f'error: failed to create secret secrets "{name}" already exists')
    cluster.put(validated({"apiVersion": "v1", "kind": "Secret", "type": "Opaque",
                           "metadata": {"name": name, "namespace": namespace}, "data": data}, "secret"))
    print(f"secret/{name} created")


def label_node(cluster: Cluster, name: str, pairs: list[str]) -> None:
    node = cluster.get("Node", "", name)
    if node is None:
        raise Failed(f'Error from server (NotFound): nodes "{name}" not found')
    labels = node["metadata"].setdefault("labels", {})
    changed = False
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not LABEL_NAME.match(key) or not LABEL_VALUE.match(value):
            raise Failed(f'error: invalid label spec: "{pair}"')
        if key in labels and labels[key] != value:
            raise Failed(f"error: '{key}' already has a value ({labels[key]}), and --overwrite is false")
        changed |= labels.get(key) != value
        labels[key] = value
    cluster.put(validated(node, "node"))
    print(f"node/{name} {'labeled' if changed else 'not labeled'}")


def set_env(cluster: Cluster, namespace: str, target: str, pairs: list[str]) -> None:
    ds = daemonset(cluster, namespace, target)
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not re.fullmatch(r"[-._a-zA-Z][-._a-zA-Z0-9]*", key):
            raise Failed(f'error: invalid env: "{pair}"')
        for container in ds["spec"]["template"]["spec"]["containers"]:
            env = container.setdefault("env", [])
            for var in env:
                if var["name"] == key:
                    var.pop("valueFrom", None)
                    var["value"] = value
                    break
            else:
                env.append({"name": key, "value": value})
    cluster.put(validated(ds, "daemonset"))
    print(f"daemonset.apps/{ds['metadata']['name']} env updated")


def daemonset(cluster: Cluster, namespace: str, target: str) -> dict[str, Any]:
    kind, _, name = target.partition("/")
    if kind != "daemonset" or not name:
        raise Failed(f"kubectl (stand-in): {target}: only daemonset/NAME here")
    ds = cluster.get("DaemonSet", namespace, name)
    if ds is None:
        raise Failed(f'Error from server (NotFound): daemonsets.apps "{name}" not found')
    return ds


def parse_duration(text: str) -> float:
    """A Go duration as kubectl takes it (10m, 90s, 1h30m); 0 is no limit."""
    if text == "0":
        return 0
    if not re.fullmatch(f"(?:{DURATION.pattern})+", text):
        raise Failed(f'error: invalid argument "{text}" for "--timeout" flag: time: invalid duration "{text}"')
    scale = {"h": 3600, "m": 60, "s": 1, "ms": 0.001}
    return sum(float(n) * scale[unit] for n, unit in DURATION.findall(text))


def rollout_status(cluster: Cluster, namespace: str, target: str, timeout: float) -> None:
    """Wait until every node the DaemonSet selects runs a Ready pod of its current template."""
    ds = daemonset(cluster, namespace, target)
    name = ds["metadata"]["name"]
    pods = reconcile(cluster, ds)
    deadline = time.monotonic() + timeout if timeout else float("inf")
    said = -1
    while True:
        ready = sum(Kubelet(cluster, node).ready(pod) for node, pod in pods.items())
        if ready == len(pods):
            print(f'daemon set "{name}" successfully rolled out', flush=True)
            return
        if ready != said:
            print(f'Waiting for daemon set "{name}" rollout to finish: {ready} of {len(pods)} updated pods are '
                  f"available...", flush=True)
            said = ready
        if time.monotonic() > deadline:
            logs = "\n".join(f"--- pod {pod['name']} on {node}:\n{Kubelet(cluster, node).log(pod)}"
                             for node, pod in pods.items())
            raise Failed(f"error: timed out waiting for the condition\n{logs}")
        time.sleep(0.5)


# The DaemonSet controller and the kubelets

def template_hash(ds: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(ds["spec"]["template"], sort_keys=True).encode()).hexdigest()[:10]


def selected(node: dict[str, Any], ds: dict[str, Any]) -> bool:
    wanted = ds["spec"]["template"]["spec"].get("nodeSelector") or {}
    labels = node["metadata"].get("labels") or {}
    return all(labels.get(k) == v for k, v in wanted.items())


def reconcile(cluster: Cluster, ds: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The DaemonSet controller: a pod of the current template on each selected node (an old one
    replaced), none elsewhere. The pods, by node."""
    pods = {}
    for node in cluster.all("Node"):
        kubelet = Kubelet(cluster, node["metadata"]["name"])
        pod = kubelet.pod_of(ds)
        if not selected(node, ds):
            if pod:
                kubelet.delete(pod)
            continue
        if pod and (pod["template"] != template_hash(ds) or not kubelet.exists(pod)):
            kubelet.delete(pod)
            pod = None
        pods[kubelet.node] = pod or kubelet.start(ds)
    return pods


class Kubelet:
    """One node's kubelet: its pods are Podman containers in the node's own image store."""

    def __init__(self, cluster: Cluster, node: str) -> None:
        self.cluster, self.node = cluster, node
        self.spec = cluster.nodes()[node]
        s = self.spec.storage
        assert len(f"{s}/run") <= 50, f"{s}: too long for Podman's runroot (50 characters at most)"
        self.podman = [*PODMAN, "--root", f"{s}/root", "--runroot", f"{s}/run", "--tmpdir", f"{s}/tmp"]

    def _record(self, ds: dict[str, Any]) -> str:
        meta = ds["metadata"]
        return os.path.join(self.cluster.state, "pods", self.node, f"{meta['namespace']}_{meta['name']}.json")

    def pod_of(self, ds: dict[str, Any]) -> dict[str, Any] | None:
        with contextlib.suppress(FileNotFoundError), open(self._record(ds)) as f:
            return json.load(f)   # type: ignore[no-any-return]
        return None

    def exists(self, pod: dict[str, Any]) -> bool:
        return self._podman("container", "exists", pod["name"]).returncode == 0

    def _podman(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        return subprocess.run([*self.podman, *args], capture_output=True, text=True, timeout=timeout)

    def start(self, ds: dict[str, Any]) -> dict[str, Any]:
        meta, spec = ds["metadata"], ds["spec"]["template"]["spec"]
        name = f"{meta['name']}-{hashlib.sha256(self.node.encode()).hexdigest()[:5]}"
        refused = sorted(set(spec) - POD_FIELDS) + ([] if len(spec["containers"]) == 1 else ["several containers"])
        container = spec["containers"][0]
        refused += sorted(f"containers[{container['name']}].{k}" for k in set(container) - CONTAINER_FIELDS)
        volumes = {v["name"] for v in spec.get("volumes", [])}
        refused += [f"volumeMounts[{m['name']}] (no such volume)" for m in container.get("volumeMounts", [])
                    if m["name"] not in volumes]
        if refused:
            raise Failed(f"kubectl (stand-in): pod {name}: the kubelet stand-in does not run {refused}")
        self._admit(meta["namespace"], name, spec, container)
        pod = {"name": name, "namespace": meta["namespace"], "template": template_hash(ds)}
        self._pull(name, container)
        args = [*LIMITS, "--pull=never", "--network=host"]   # (the API server stand-in is on this machine's loopback)
        if spec.get("hostPID"):
            args.append("--pid=host")
        if (container.get("securityContext") or {}).get("privileged"):
            args.append("--privileged")
        for source, target, read_only in self._volumes(pod, spec, container):
            args += ["-v", f"{source}:{target}{':ro' if read_only else ''}"]
        for key, value in self._env(pod, container).items():
            args += ["-e", f"{key}={value}"]
        if "command" in container:
            args += ["--entrypoint", json.dumps(container["command"])]
        for port in container.get("ports") or []:   # host networking: the port must be this machine's to take
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", port["containerPort"])) == 0:
                    raise Failed(f"kubectl (stand-in): pod {name}: port {port['containerPort']} is taken on "
                                 f"this machine (its pods share this machine's network)")
        run = self._podman("run", "-d", "--name", name, *args, container["image"], *container.get("args", []))
        if run.returncode != 0:
            raise Failed(f"kubectl (stand-in): pod {name} on {self.node}: Error: {run.stderr.strip()}")
        os.makedirs(os.path.dirname(self._record(ds)), exist_ok=True)
        with open(self._record(ds), "w") as f:
            json.dump({**pod, "container": container}, f)
        return {**pod, "container": container}

    def _admit(self, namespace: str, pod: str, spec: dict[str, Any], container: dict[str, Any]) -> None:
        """What the API server checks before the controller's pod exists: its ServiceAccount, and
        Pod Security's level for the namespace (the cluster's, unless its label says otherwise)."""
        account = spec.get("serviceAccountName", "default")
        if account != "default" and self.cluster.get("ServiceAccount", namespace, account) is None:
            raise Failed(f'Error creating: pods "{pod}" is forbidden: error looking up service account '
                         f'{namespace}/{account}: serviceaccount "{account}" not found')
        ns = self.cluster.get("Namespace", "", namespace) or {"metadata": {}}
        level = (ns["metadata"].get("labels") or {}).get("pod-security.kubernetes.io/enforce",
                                                           self.cluster.config["pod_security"])
        wants = [why for why, needed in (
            ("host namespaces (hostPID=true)", spec.get("hostPID")),
            ("hostPath volumes", any("hostPath" in v for v in spec.get("volumes", []))),
            (f'privileged (container "{container["name"]}" must not set securityContext.privileged=true)',
             (container.get("securityContext") or {}).get("privileged"))) if needed]
        if level != "privileged" and wants:
            raise Failed(f'Error creating: pods "{pod}" is forbidden: violates PodSecurity "{level}:latest": '
                         + ", ".join(wants))

    def _pull(self, pod: str, container: dict[str, Any]) -> None:
        image = container["image"]
        _, tag, digest = split_image(image)
        policy = container.get("imagePullPolicy") or ("Always" if tag in ("", "latest") and not digest else
                                                       "IfNotPresent")
        present = self._podman("image", "exists", image).returncode == 0
        if policy == "Never" and not present:
            raise Failed(f'kubectl (stand-in): pod {pod} on {self.node}: ErrImageNeverPull: "{image}"')
        if policy == "Always" or not present:
            pulled = self._podman("pull", "-q", image, timeout=600)
            if pulled.returncode != 0:
                raise Failed(f'kubectl (stand-in): pod {pod} on {self.node}: Failed to pull image "{image}": '
                             f"{pulled.stderr.strip()}")

    def _volumes(self, pod: dict[str, Any], spec: dict[str, Any],
                 container: dict[str, Any]) -> list[tuple[str, str, bool]]:
        """(this machine's path, the container's, read-only) for each volume mount, and the
        ServiceAccount's files."""
        volumes = {v["name"]: v for v in spec.get("volumes", [])}
        top = os.path.join(self.cluster.state, "pods", self.node, pod["name"])
        shutil.rmtree(top, ignore_errors=True)
        mounts = []
        for mount in container.get("volumeMounts", []):
            volume, target, read_only = volumes[mount["name"]], mount["mountPath"], bool(mount.get("readOnly"))
            if "hostPath" in volume:
                mounts += [(source, target.rstrip("/") + "/" + rel if rel else target, read_only)
                           for rel, source in self._host_path(pod["name"], volume["hostPath"])]
            elif "configMap" in volume or "secret" in volume:
                mounts.append((self._data_volume(pod, volume, os.path.join(top, volume["name"])), target, read_only))
            else:
                raise Failed(f"kubectl (stand-in): volume {volume['name']}: only hostPath, configMap and secret here")
        api = self.cluster.config["api_server"]
        account = os.path.join(top, "serviceaccount")
        os.makedirs(account)
        shutil.copy(api["ca"], os.path.join(account, "ca.crt"))
        for name, text in (("token", "stand-in-token"), ("namespace", pod["namespace"])):
            with open(os.path.join(account, name), "w") as f:
                f.write(text)
        return [*mounts, (account, SERVICE_ACCOUNT_DIR, True)]

    def _host_path(self, pod: str, host_path: dict[str, str]) -> list[tuple[str, str]]:
        """(folder under the mount, this machine's path) for a hostPath of the node."""
        path = host_path["path"].rstrip("/") or "/"
        if path == "/":
            return [(rel, source) for rel, source in sorted(self.spec.root.items())]
        for rel, source in self.spec.root.items():
            if path == f"/{rel}" or path.startswith(f"/{rel}/"):
                found = source + path[len(rel) + 1:]
                if host_path.get("type") == "Directory" and not os.path.isdir(found):
                    raise Failed(f'kubectl (stand-in): pod {pod}: MountVolume.SetUp failed: hostPath type check '
                                 f'failed: {path} is not a directory')
                return [("", found)]
        raise Failed(f"kubectl (stand-in): pod {pod}: hostPath {path} is none of the node's folders "
                     f"({', '.join(sorted(self.spec.root))})")

    def _data_volume(self, pod: dict[str, Any], volume: dict[str, Any], folder: str) -> str:
        """A ConfigMap's or a Secret's data as files, with the volume's mode; an optional one missing
        is an empty folder, as the kubelet makes it."""
        kind, source = ("ConfigMap", volume["configMap"]) if "configMap" in volume else ("Secret", volume["secret"])
        name = source.get("name") or source.get("secretName")
        if set(source) - {"name", "secretName", "defaultMode", "optional"}:
            raise Failed(f"kubectl (stand-in): volume {volume['name']}: only name, defaultMode and optional here")
        obj = self.cluster.get(kind, pod["namespace"], name)
        os.makedirs(folder)
        if obj is None and not source.get("optional"):
            raise Failed(f'kubectl (stand-in): pod {pod["name"]}: MountVolume.SetUp failed for volume '
                         f'"{volume["name"]}" : {kind.lower()} "{name}" not found')
        items = {k: v.encode() for k, v in (obj or {}).get("data", {}).items()} if kind == "ConfigMap" else \
            {k: base64.b64decode(v) for k, v in (obj or {}).get("data", {}).items()}
        for key, data in items.items():
            with open(os.path.join(folder, key), "wb") as f:
                f.write(data)
            os.chmod(os.path.join(folder, key), source.get("defaultMode", 0o644))
        return folder

    def _env(self, pod: dict[str, Any], container: dict[str, Any]) -> dict[str, str]:
        """The kubelet's service variables, the container's own (fieldRefs resolved), the node's."""
        api = self.cluster.config["api_server"]
        env = {"KUBERNETES_SERVICE_HOST": api["host"], "KUBERNETES_SERVICE_PORT": str(api["port"])}
        fields = {"spec.nodeName": self.node, "metadata.name": pod["name"], "metadata.namespace": pod["namespace"]}
        for var in container.get("env", []):
            if "valueFrom" in var:
                path = (var["valueFrom"].get("fieldRef") or {}).get("fieldPath")
                if path not in fields:
                    raise Failed(f"kubectl (stand-in): env {var['name']}: only fieldRefs to {sorted(fields)} here")
                env[var["name"]] = fields[path]
            else:
                env[var["name"]] = var.get("value", "")
        return {**env, **self.spec.env}

    def ready(self, pod: dict[str, Any]) -> bool:
        """Whether the pod's readinessProbe answers (running, and no probe: ready); a container that
        ended fails the wait with its log."""
        state = self._podman("inspect", "-f", "{{.State.Running}} {{.State.ExitCode}}", pod["name"]).stdout.split()
        if state[:1] != ["true"]:
            raise Failed(f"kubectl (stand-in): pod {pod['name']} on {self.node}: its container ended "
                         f"(exit code {state[1] if len(state) > 1 else '?'}); its log:\n{self.log(pod)}")
        probe = pod["container"].get("readinessProbe")
        if not probe:
            return True
        get = probe.get("httpGet")
        if not get or set(probe) - {"httpGet", "periodSeconds", "timeoutSeconds", "initialDelaySeconds",
                                    "failureThreshold", "successThreshold"}:
            raise Failed("kubectl (stand-in): only httpGet readiness probes here")
        port = get["port"]
        if isinstance(port, str):
            port = next(p["containerPort"] for p in pod["container"].get("ports", []) if p.get("name") == port)
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}{get.get('path', '/')}",
                                        timeout=probe.get("timeoutSeconds", 1)) as answer:
                return 200 <= int(answer.status) < 400
        except (urllib.error.URLError, OSError):
            return False

    def log(self, pod: dict[str, Any]) -> str:
        out = self._podman("logs", pod["name"])
        return (out.stdout + out.stderr)[-6000:]

    def delete(self, pod: dict[str, Any]) -> None:
        self._podman("rm", "-f", "-t", "5", pod["name"])
        for record in os.listdir(os.path.join(self.cluster.state, "pods", self.node)):
            path = os.path.join(self.cluster.state, "pods", self.node, record)
            if record.endswith(".json"):
                with open(path) as f:
                    if json.load(f)["name"] == pod["name"]:
                        os.unlink(path)
        shutil.rmtree(os.path.join(self.cluster.state, "pods", self.node, pod["name"]), ignore_errors=True)

    def pods(self) -> list[dict[str, Any]]:
        folder = os.path.join(self.cluster.state, "pods", self.node)
        found = []
        for record in sorted(os.listdir(folder)) if os.path.isdir(folder) else []:
            if record.endswith(".json"):
                with open(os.path.join(folder, record)) as f:
                    found.append(json.load(f))
        return found

    def clean(self) -> None:
        """Every container and image of the node's store gone, and the store with them."""
        if os.path.isdir(self.spec.storage):
            self._podman("rm", "-a", "-f", "-t", "5")
            self._podman("rmi", "-a", "-f")
            from runtime.container import mounts   # (the test's side only)
            mounts.unmount_under(self.spec.storage)
            shutil.rmtree(self.spec.storage, ignore_errors=True)


def tear_down(state: str) -> None:
    """The pods and the nodes' image stores gone (the state folder is the caller's)."""
    if os.path.isfile(os.path.join(state, "cluster.json")):
        cluster = Cluster(state)
        for node in cluster.nodes():
            Kubelet(cluster, node).clean()


# The command line

def main(argv: list[str]) -> int:
    state = os.environ.get(STATE_ENV)
    if not state:
        print(f"kubectl (stand-in): ${STATE_ENV} names no cluster", file=sys.stderr)
        return 1
    cluster = Cluster(state)
    try:
        with cluster.locked():
            run(cluster, argv)
    except Failed as e:
        print(e, file=sys.stderr)
        return 1
    return 0


def run(cluster: Cluster, argv: list[str]) -> None:
    namespace, i = "default", 0
    args: list[str] = []
    while i < len(argv):   # -n/--namespace go anywhere, as kubectl's global flag
        if argv[i] in ("-n", "--namespace") and i + 1 < len(argv):
            namespace, i = argv[i + 1], i + 2
        elif argv[i].startswith("--namespace="):
            namespace, i = argv[i].split("=", 1)[1], i + 1
        else:
            args, i = [*args, argv[i]], i + 1
    match args:
        case ["apply", "-f", path]:
            apply(cluster, [(d, path) for d in documents(path)], namespace)
        case ["apply", "-k", directory]:
            apply(cluster, render(directory), namespace)
        case ["create", "secret", "generic", name, *files] if files and all(
                f.startswith("--from-file=") for f in files):
            create_secret(cluster, namespace, name, [f.split("=", 1)[1] for f in files])
        case ["label", "node", name, *pairs] if pairs:
            label_node(cluster, name, pairs)
        case ["set", "env", target, *pairs] if pairs:
            set_env(cluster, namespace, target, pairs)
        case ["rollout", "status", target, *flags] if all(f.startswith("--timeout=") for f in flags):
            timeout = parse_duration(flags[-1].split("=", 1)[1]) if flags else 0
            rollout_status(cluster, namespace, target, timeout)
        case _:
            raise Failed(f"kubectl (stand-in): not done by this stand-in: kubectl {' '.join(argv)}")


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
