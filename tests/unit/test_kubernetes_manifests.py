"""The node deployment (packaging/kubernetes): every manifest valid against Kubernetes' own schemas
(kubernetes-validate's bundled OpenAPI schemas, offline), the kustomization complete, the
RuntimeClass the same as config/'s, and the installer image built from files that exist."""
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
    rules = {(r["resources"][0], v) for r in role["rules"] for v in r["verbs"]}
    assert {("events", "create"), ("nodes", "patch")} <= rules
    (namespace,) = documents("namespace.yaml")
    assert namespace["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "privileged"


def test_the_runtimeclass_is_the_same_as_the_one_in_config():
    assert documents("runtimeclass.yaml") == [d for d in yaml.safe_load_all(open(os.path.join(TOP, "config", "runtimeclass.yaml"))) if d]


def test_the_containerfile_copies_files_that_exist():
    for line in open(os.path.join(KUBE, "Containerfile")):
        if line.startswith("COPY") and "--from" not in line:
            for source in line.split()[1:-1]:   # the bundle is made before the build (make-bundle.sh)
                assert os.path.exists(os.path.join(TOP, source)) or source == ".installer-bundle/", source


def test_the_vllm_example_is_a_valid_deployment_whose_annotations_fit_its_command_line():
    """examples/vllm: valid for Kubernetes, and rewarm would accept it as written (the engine preset
    reads vLLM's flags off the container's command line and environment)."""
    from runtime.model import annotations as ann
    with open(os.path.join(TOP, "examples", "vllm", "deployment.yaml")) as f:
        deployment = yaml.safe_load(f)
    kubernetes_validate.validate(deployment, VERSION, strict=True)
    pod = deployment["spec"]["template"]
    container = pod["spec"]["containers"][0]
    process = {"args": container["command"], "env": [f"{e['name']}={e['value']}" for e in container["env"]]}
    request = ann.parse(pod["metadata"]["annotations"], process)
    assert pod["spec"]["runtimeClassName"] == "rewarm" and request.capture is ann.Capture.ON_READY
    assert request.hooks.ready_http == "http://127.0.0.1:8000/health"
    assert [str(c) for c in request.hooks.quiesce] == ["POST http://127.0.0.1:8000/sleep?level=2"]
