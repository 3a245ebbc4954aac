"""The fingerprint of a container on this node, as capture records it and restore compares it."""
from __future__ import annotations


from runtime.host import fingerprint_key, node_facts
from runtime.gpu import nvml
from runtime.model import oci_spec
from runtime.model.fingerprint import Fingerprint, env_hashes, image_of, key_id
from runtime.model.settings import Settings
from runtime.model.oci_spec import Spec


def of_container(spec: Spec, settings: Settings) -> Fingerprint:
    process = oci_spec.process(spec)
    key = fingerprint_key.load(settings.fingerprint_key_file)
    return Fingerprint(
        image=image_of(oci_spec.annotations_of(spec)),
        args=tuple(process.get("args") or ()),
        cwd=process.get("cwd") or "/",
        env=env_hashes(process.get("env") or [], settings.env_ignore, key),
        env_key=key_id(key),
        arch=node_facts.arch(),
        cpu=node_facts.cpu_identity(),
        kernel=node_facts.kernel(),
        criu=node_facts.tool_version([settings.criu, "--version"]),
        runtime=node_facts.tool_version([settings.runtime, "--version"]),
        gpu=nvml.fingerprint_of_spec(spec),
    )
