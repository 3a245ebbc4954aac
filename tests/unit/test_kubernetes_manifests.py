"""The node deployment (packaging/kubernetes): every manifest valid against Kubernetes' own schemas
(kubernetes-validate's bundled OpenAPI schemas, offline), the kustomization complete, the
RuntimeClass the same as config/'s, the installer image built from files that exist, and the agent
allowed what it does and no more. The serving examples (examples/vllm, examples/sglang): valid, complete, and such that
rewarm accepts them as written and no serving pod is ever captured."""
from __future__ import annotations

import os

import kubernetes_validate
import pytest
import yaml

TOP = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
KUBE = os.path.join(TOP, "packaging", "kubernetes")
VERSION = "1.30.0"


def documents(name: str) -> list[dict]:
    with open(os.path.join(KUBE, name)) as f:
        return [d for d in yaml.safe_load_all(f) if d]


def kustomization() -> dict:
    return documents("kustomization.yaml")[0]


@pytest.mark.parametrize("name", kustomization()["resources"])
def test_every_manifest_is_valid_for_kubernetes(name):
    for doc in documents(name):
        kubernetes_validate.validate(doc, VERSION, strict=True)


def test_the_kustomization_lists_every_manifest_and_its_image():
    listed = set(kustomization()["resources"])
    present = {n for n in os.listdir(KUBE) if n.endswith(".yaml") and n != "kustomization.yaml"}
    assert listed == present
    daemonset = documents("daemonset.yaml")[0]
    image = daemonset["spec"]["template"]["spec"]["containers"][0]["image"]
    assert image.split(":")[0] == kustomization()["images"][0]["name"]


def test_the_installer_changes_only_what_is_rewarms_and_fails_when_a_step_fails():
    """It runs privileged in the host's PID namespace from the bundle alone: no package manager or
    download, the ConfigMap always wins, a runtime restart only when its config changed, and no
    step whose failure is swallowed."""
    spec = documents("daemonset.yaml")[0]["spec"]["template"]["spec"]
    assert spec["hostPID"] and spec["containers"][0]["securityContext"]["privileged"]
    script = open(os.path.join(KUBE, "node-install.sh")).read()
    code = "\n".join(line.split("#")[0] for line in script.splitlines())
    for forbidden in ("apt", "pip download", "curl", "wget", "|| true", "grep -q", "[ ! -f"):
        assert forbidden not in code, forbidden
    assert "set -eu" in code and "rewarm install --runtime $runtime" in code
    assert 'case $out in *"restart "*" to load it"*) restart_runtime' in code and "rewarm doctor || fail" in code


def test_the_runtimeclass_schedules_only_onto_nodes_the_agent_labelled_and_the_agent_may_do_that():
    from runtime.node import agent
    (runtime_class,) = documents("runtimeclass.yaml")
    assert runtime_class["scheduling"]["nodeSelector"] == {agent.NODE_LABEL: "ready"}
    account, role, binding = documents("rbac.yaml")
    spec = documents("daemonset.yaml")[0]["spec"]["template"]["spec"]
    assert spec["serviceAccountName"] == account["metadata"]["name"] == binding["subjects"][0]["name"]
    rules = {(resource, v) for r in role["rules"] for resource in r["resources"] for v in r["verbs"]}
    assert {("events", "create"), ("nodes", "patch")} <= rules
    # The readiness gate: read a pod, patch its status (the one condition); never the pod itself.
    assert {(resource, v) for resource, v in rules if resource.startswith("pods")} == {("pods", "get"),
                                                                                        ("pods/status", "patch")}
    (namespace,) = documents("namespace.yaml")
    assert namespace["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "privileged"


def test_the_runtimeclass_is_the_same_as_the_one_in_config():
    assert documents("runtimeclass.yaml") == [d for d in yaml.safe_load_all(open(os.path.join(TOP, "config", "runtimeclass.yaml"))) if d]


def test_the_containerfile_copies_files_that_exist():
    for line in open(os.path.join(KUBE, "Containerfile")):
        if line.startswith("COPY") and "--from" not in line:
            for source in line.split()[1:-1]:   # the bundle is made before the build (make-bundle.sh)
                assert os.path.exists(os.path.join(TOP, source)) or source == ".installer-bundle/", source


# The serving examples (examples/ENGINE): the engine's port and what its preset calls before a capture.
EXAMPLES = {"vllm": ("8000", ["POST http://127.0.0.1:8000/sleep?level=2"]),
            "sglang": ("30000", ["POST http://127.0.0.1:30000/release_memory_occupation"])}


def example(engine: str, name: str) -> list[dict]:
    with open(os.path.join(TOP, "examples", engine, name)) as f:
        return [d for d in yaml.safe_load_all(f) if d]


def example_kinds(engine: str) -> dict[str, dict]:
    with open(os.path.join(TOP, "examples", engine, "kustomization.yaml")) as f:
        listed = yaml.safe_load(f)["resources"]
    return {d["kind"]: d for name in listed for d in example(engine, name)}


def engine_container(pod: dict) -> dict:
    return next(c for c in pod["spec"]["containers"] if c["name"] == pod["metadata"]["annotations"]["rewarm.dev/container"])


def request_of(pod: dict):
    from runtime.model import annotations as ann
    container = engine_container(pod)
    process = {"args": container["command"], "env": [f"{e['name']}={e['value']}" for e in container["env"]]}
    return ann.parse(pod["metadata"]["annotations"], process)


@pytest.mark.parametrize("engine", sorted(EXAMPLES))
def test_the_serving_example_is_valid_and_its_kustomization_lists_every_file(engine):
    directory = os.path.join(TOP, "examples", engine)
    with open(os.path.join(directory, "kustomization.yaml")) as f:
        listed = yaml.safe_load(f)["resources"]
    assert set(listed) == {n for n in os.listdir(directory) if n.endswith(".yaml") and n != "kustomization.yaml"}
    for name in listed:
        for doc in example(engine, name):
            kubernetes_validate.validate(doc, VERSION, strict=True)


@pytest.mark.parametrize("engine", sorted(EXAMPLES))
def test_the_deployment_only_restores_behind_the_readiness_gate_and_pulls_on_a_miss(engine):
    """Its pods are never captured (the Job is), list the gate, pull the Job's snapshot, and rewarm
    accepts their annotations with the engine's command line as written (the preset's hooks and readiness)."""
    from runtime.model import annotations as ann
    port, quiesce = EXAMPLES[engine]
    pod = example_kinds(engine)["Deployment"]["spec"]["template"]
    request = request_of(pod)
    assert pod["spec"]["runtimeClassName"] == "rewarm" and request.capture is ann.Capture.NEVER
    assert {"conditionType": ann.READY_CONDITION} in pod["spec"]["readinessGates"]
    assert request.snapshot_ref and request.push is ann.Push.NEVER
    assert request.hooks.ready_http == f"http://127.0.0.1:{port}/health"
    assert [str(c) for c in request.hooks.quiesce] == quiesce
    resources = engine_container(pod)["resources"]
    assert resources["requests"] == resources["limits"] and resources["limits"]["memory"]   # sized, Guaranteed


@pytest.mark.parametrize("engine", sorted(EXAMPLES))
def test_the_capture_job_captures_the_deployments_container_pushes_it_and_exits(engine):
    """The Job's engine container is the Deployment's field for field (what a snapshot must fit, and
    the mounts a restore binds again); its pod is captured once ready, pushed where the Deployment
    pulls from, in the same snapshot name, and then ends."""
    from runtime.model import annotations as ann
    kinds = example_kinds(engine)
    job, serving = kinds["Job"]["spec"]["template"], kinds["Deployment"]["spec"]["template"]
    request, restoring = request_of(job), request_of(serving)
    assert request.capture is ann.Capture.ON_READY_THEN_EXIT and request.push is ann.Push.ON_CAPTURE
    assert (request.snapshot, request.snapshot_ref) == (restoring.snapshot, restoring.snapshot_ref)
    assert job["spec"]["restartPolicy"] == "Never" and job["spec"]["runtimeClassName"] == "rewarm"
    assert engine_container(job) == engine_container(serving)
    volumes = {v["name"]: v for v in serving["spec"]["volumes"]}
    assert all(volumes[v["name"]] == v for v in job["spec"]["volumes"])


@pytest.mark.parametrize("engine", sorted(EXAMPLES))
def test_only_the_proxy_is_reachable_and_the_engine_listens_on_loopback(engine):
    """The engines' hook endpoints (vLLM's dev-mode /sleep, /wake_up, /collective_rpc; SGLang's memory
    and weight endpoints) are on their serving port; a NetworkPolicy filters ports, not paths: the
    Service and the policy reach the proxy's port alone, the engine binds 127.0.0.1, and the proxy's
    config is the ConfigMap the pod mounts (tests/system/test_engine_proxies.py runs it)."""
    kinds = example_kinds(engine)
    pod = kinds["Deployment"]["spec"]["template"]
    server = engine_container(pod)
    (proxy,) = [c for c in pod["spec"]["containers"] if c is not server and c["name"] != server["name"]]
    assert server["command"][server["command"].index("--host") + 1] == "127.0.0.1" and "ports" not in server
    (port,) = proxy["ports"]
    assert kinds["Service"]["spec"]["ports"][0]["targetPort"] == port["name"]
    assert kinds["Service"]["spec"]["selector"] == pod["metadata"]["labels"]
    allowed = [p["port"] for rule in kinds["NetworkPolicy"]["spec"]["ingress"] for p in rule["ports"]]
    assert allowed == [port["containerPort"]]
    assert proxy["readinessProbe"]["httpGet"] == {"path": "/health", "port": port["name"]}
    config = next(v for v in pod["spec"]["volumes"] if v.get("configMap"))
    assert config["configMap"]["name"] == kinds["ConfigMap"]["metadata"]["name"]
    assert f"listen {port['containerPort']};" in kinds["ConfigMap"]["data"]["nginx.conf"]
    assert f"server 127.0.0.1:{EXAMPLES[engine][0]};" in kinds["ConfigMap"]["data"]["nginx.conf"]
