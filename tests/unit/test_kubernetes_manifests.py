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


def test_the_installer_is_privileged_on_the_host_and_restarts_containerd_only_on_change():
    spec = documents("daemonset.yaml")[0]["spec"]["template"]["spec"]
    assert spec["hostPID"] and spec["containers"][0]["securityContext"]["privileged"]
    script = open(os.path.join(KUBE, "node-install.sh")).read()
    assert "rewarm install --runtime containerd" in script and "systemctl restart containerd" in script


def test_the_runtimeclass_is_config_s():
    assert documents("runtimeclass.yaml") == [d for d in yaml.safe_load_all(open(os.path.join(TOP, "config", "runtimeclass.yaml"))) if d]


def test_the_containerfile_copies_files_that_exist():
    for line in open(os.path.join(KUBE, "Containerfile")):
        if line.startswith("COPY") and "--from" not in line:
            for source in line.split()[1:-1]:
                assert os.path.exists(os.path.join(TOP, source)), source


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
    assert [str(c) for c in request.hooks.quiesce] == ["POST http://127.0.0.1:8000/sleep?level=1"]
