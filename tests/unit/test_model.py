"""The model: annotations parsed once, names validated, settings typed, the manifest round-tripped
through its schema, fingerprint differences worded for an operator."""
from __future__ import annotations

import dataclasses
import re

import pytest

from runtime.model import annotations as ann
from runtime.model.errors import InvalidInput, SettingsError
from runtime.model.fingerprint import Fingerprint, differences, env_hashes
from runtime.model.manifest import CaptureInfo, FileDigest, Manifest, RootfsInfo
from runtime.model.names import validate_name, validate_namespace
from runtime.model.settings import Settings, Verify, from_mapping

FP = Fingerprint(image="sha256:abc", args=("python", "w.py"), cwd="/", env={"A": "h"}, arch="x86_64", cpu="c",
                 kernel="6.18", criu="Version: 4.2.1", runtime="runc version 1.1.5")


def test_a_full_set_of_annotations_becomes_one_request():
    request = ann.parse({"rewarm.dev/snapshot": "llm-8b", "rewarm.dev/capture": "on-ready",
                         "rewarm.dev/ready-http": "http://127.0.0.1:8000/health", "rewarm.dev/fallback": "fail",
                         "rewarm.dev/quiesce-http": "http://127.0.0.1:8000/sleep", "other.io/x": "ignored"})
    assert request == ann.Request("llm-8b", ann.Capture.ON_READY, ann.DEFAULT_READY_FILE,
                                  "http://127.0.0.1:8000/health", ann.Fallback.FAIL, "http://127.0.0.1:8000/sleep")


@pytest.mark.parametrize("annotations, message", [
    ({"rewarm.dev/capture": "on-ready"}, "rewarm.dev/snapshot is required"),
    ({"rewarm.dev/snapshot": "../../etc"}, "invalid snapshot name '../../etc'"),
    ({"rewarm.dev/snapshot": "x", "rewarm.dev/capture": "sometimes"}, "invalid rewarm.dev/capture: 'sometimes'"),
    ({"rewarm.dev/snapshot": "x", "rewarm.dev/fallback": "maybe"}, "expected 'cold' or 'fail'"),
    ({"rewarm.dev/snapshot": "x", "rewarm.dev/ready-file": "relative"}, "an absolute path inside the container"),
    ({"rewarm.dev/snapshot": "x", "rewarm.dev/ready-file": "/a/../../b"}, "an absolute path inside the container"),
    ({"rewarm.dev/snapshot": "x", "rewarm.dev/resume-http": "https://x/"}, "expected http://HOST:PORT/PATH"),
    ({"rewarm.dev/snapshot": "x", "rewarm.dev/snapshots": "y"}, "unknown annotation rewarm.dev/snapshots"),
])
def test_a_bad_annotation_is_refused_by_name(annotations, message):
    with pytest.raises(InvalidInput, match=re.escape(message)):
        ann.parse(annotations)


@pytest.mark.parametrize("value", ["../../evil", "/abs", "", "a/b", "UPPER", "-x", "x" * 64, "a\0b", "."])
def test_names_that_could_leave_the_store_are_refused(value):
    with pytest.raises(InvalidInput):
        validate_name(value)
    with pytest.raises(InvalidInput):
        ann.namespace_of({"io.kubernetes.cri.sandbox-namespace": value}) if value else validate_namespace(value)


def test_the_namespace_comes_from_containerd_or_cri_o_and_defaults():
    assert ann.namespace_of({"io.kubernetes.cri.sandbox-namespace": "team-a"}) == "team-a"
    assert ann.namespace_of({"io.kubernetes.pod.namespace": "team-b"}) == "team-b"
    assert ann.namespace_of({}) == "default"
    assert ann.is_sandbox({"io.kubernetes.cri.container-type": "sandbox"})


def test_settings_are_typed_and_unknown_or_mistyped_keys_are_refused():
    s = from_mapping({"verify": "size", "criu_options": ["network-lock skip"], "restore_timeout_s": 5})
    assert s.verify is Verify.SIZE and s.criu_options == ("network-lock skip",) and s.restore_timeout_s == 5
    assert from_mapping(s.to_json()) == s
    for raw, message in (({"colour": 1}, "unknown keys colour"), ({"verify": "md5"}, "verify must be one of"),
                         ({"restore_timeout_s": "5"}, "non-negative integer"), ({"pod_log_notice": 1}, "must be a bool"),
                         ({"criu_options": "x"}, "list of strings"), ([], "JSON object")):
        with pytest.raises(SettingsError, match=message):
            from_mapping(raw)


def test_the_manifest_round_trips_through_its_schema():
    m = Manifest(namespace="default", name="w", created="2026-11-29T00:00:00Z", fingerprint=FP,
                 fingerprint_id=FP.ident(), source={"container_id": "c1"},
                 files={"checkpoint/inventory.img": FileDigest(3, "a" * 64)}, rootfs=RootfsInfo("overlay", 10, 1),
                 capture=CaptureInfo(1.5, 1.0, True, 3), gpu_uuids=("GPU-1",), gpu_processes={"7": ("GPU-1",)},
                 bound_addresses=("10.0.0.2",))
    assert Manifest.from_json(m.to_json()) == m
    assert m.size() == 3


@pytest.mark.parametrize("change, where", [
    (lambda j: j.update(name="../x"), "name"),
    (lambda j: j["files"].update({"../../etc/passwd": {"size": 1, "sha256": "a" * 64}}), "files"),
    (lambda j: j.update(extra=1), "(top)"),
    (lambda j: j["fingerprint"].pop("criu"), "fingerprint"),
])
def test_a_manifest_that_breaks_the_schema_is_refused_with_the_field(change, where):
    raw = Manifest(namespace="default", name="w", created="t", fingerprint=FP, fingerprint_id=FP.ident(),
                   source={"container_id": "c1"}).to_json()
    change(raw)
    with pytest.raises(InvalidInput, match=re.escape(f"manifest.json: {where}")):
        Manifest.from_json(raw)


def test_fingerprint_differences_name_what_differs_and_hide_secret_values():
    here = dataclasses.replace(FP, args=("python", "other.py"), env={"A": "h2", "B": "x"})
    reasons = differences(FP, here)
    assert reasons[0] == "args: snapshot has ['python', 'w.py'], this container/node has ['python', 'other.py']"
    assert reasons[1] == "environment differs in A, B"
    assert env_hashes(["TOKEN=secret", "KUBERNETES_PORT=1", "HOSTNAME=x"], Settings().env_ignore).keys() == {"TOKEN"}
    assert "secret" not in str(env_hashes(["TOKEN=secret"], []))
    assert FP.ident() == Fingerprint.from_json(FP.to_json()).ident()


def test_every_setting_is_in_the_config_schema_and_nothing_else():
    from dataclasses import fields
    from runtime.model.resources import config_json
    assert set(config_json("rewarm-config.schema.json")["properties"]) == {f.name for f in fields(Settings)}
