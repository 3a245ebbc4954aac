"""The model: annotations parsed once, names validated, settings typed, the manifest round-tripped
through its schema, fingerprint differences worded for an operator."""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re

import pytest

from runtime.model import annotations as ann
from runtime.model import engines, oci_spec
from runtime.model.errors import InvalidInput, SettingsError
from runtime.model.fingerprint import Fingerprint, differences, env_hashes, key_id
from runtime.model.manifest import CaptureInfo, FileDigest, Manifest, RootfsInfo
from runtime.model.names import validate_name, validate_namespace
from runtime.model.hooks import HookCall
from runtime.model.settings import Settings, Verify, from_mapping

FP = Fingerprint(image="sha256:abc", args=("python", "w.py"), cwd="/", env={"A": "h"}, arch="x86_64", cpu="c",
                 kernel="6.18", criu="Version: 4.2.1", runtime="runc version 1.1.5")


def test_a_full_set_of_annotations_becomes_one_request():
    request = ann.parse({"rewarm.dev/snapshot": "llm-8b", "rewarm.dev/capture": "on-ready",
                         "rewarm.dev/ready-http": "http://127.0.0.1:8000/health", "rewarm.dev/fallback": "fail",
                         "rewarm.dev/quiesce-http": "http://127.0.0.1:8000/sleep", "other.io/x": "ignored"}, {})
    assert request == ann.Request("llm-8b", ann.Capture.ON_READY, ann.DEFAULT_READY_FILE, ann.Fallback.FAIL,
                                  ann.WorkerHooks(quiesce=(HookCall("http://127.0.0.1:8000/sleep"),),
                                                  ready_http="http://127.0.0.1:8000/health"))


@pytest.mark.parametrize("annotations, message", [
    ({"rewarm.dev/capture": "on-ready"}, "rewarm.dev/snapshot is required"),
    ({"rewarm.dev/snapshot": "../../etc"}, "invalid snapshot name '../../etc'"),
    ({"rewarm.dev/snapshot": "x", "rewarm.dev/capture": "sometimes"}, "invalid rewarm.dev/capture: 'sometimes'"),
    ({"rewarm.dev/snapshot": "x", "rewarm.dev/fallback": "maybe"}, "expected 'cold' or 'fail'"),
    ({"rewarm.dev/snapshot": "x", "rewarm.dev/ready-file": "relative"}, "an absolute path inside the container"),
    ({"rewarm.dev/snapshot": "x", "rewarm.dev/ready-file": "/a/../../b"}, "an absolute path inside the container"),
    ({"rewarm.dev/snapshot": "x", "rewarm.dev/resume-http": "https://x/"}, "expected http://HOST:PORT/PATH"),
    ({"rewarm.dev/snapshot": "x", "rewarm.dev/snapshots": "y"}, "unknown annotation rewarm.dev/snapshots"),
    ({"rewarm.dev/snapshot": "x", "rewarm.dev/ready-http": "http://h:1/\n"}, "expected http://HOST:PORT/PATH"),
    ({"rewarm.dev/snapshot": "x", "rewarm.dev/quiesce-http": "[1]"}, "each call is a URL or an object"),
    ({"rewarm.dev/snapshot": "x", "rewarm.dev/quiesce-http": "[]"}, "a list of 1 to 16 calls"),
    ({"rewarm.dev/snapshot": "x", "rewarm.dev/quiesce-http": "[{\"url\": \"http://h:1/\", \"method\": \"DELETE\"}]"},
     "method 'DELETE'"),
    ({"rewarm.dev/snapshot": "x", "rewarm.dev/quiesce-http": "[\"http://h:1/\""}, "not a URL and not a JSON list"),
    ({"rewarm.dev/snapshot": "x", "rewarm.dev/engine": "tgi"}, "unknown engine 'tgi' (known: vllm, sglang)"),
    ({"rewarm.dev/snapshot": "x", "rewarm.dev/sleep-level": "2"}, "it needs rewarm.dev/engine: vllm"),
    ({"rewarm.dev/snapshot": "x", "rewarm.dev/engine": "vllm", "rewarm.dev/sleep-level": "3"},
     "'3' (expected '1' or '2' or 'weights-resident')"),
])
def test_a_bad_annotation_is_refused_by_name(annotations, message):
    with pytest.raises(InvalidInput, match=re.escape(message)):
        ann.parse(annotations, {})


VLLM_ARGS = ["python3", "-m", "vllm.entrypoints.openai.api_server", "--model", "/models/llama", "--port=8001",
             "--enable-sleep-mode"]
VLLM_PROCESS = {"args": VLLM_ARGS, "env": ["VLLM_SERVER_DEV_MODE=1"]}


def test_the_vllm_preset_reads_its_port_and_model_off_the_command_line():
    level1 = ann.parse({"rewarm.dev/snapshot": "v", "rewarm.dev/engine": "vllm", "rewarm.dev/sleep-level": "1"},
                       VLLM_PROCESS).hooks
    assert [str(c) for c in level1.quiesce] == ["POST http://127.0.0.1:8001/sleep?level=1"]
    assert [str(c) for c in level1.resume] == ["POST http://127.0.0.1:8001/wake_up"]
    assert level1.ready_http == "http://127.0.0.1:8001/health" and level1.reads_back == ()   # weights travel along
    level2 = ann.parse({"rewarm.dev/snapshot": "v", "rewarm.dev/engine": "vllm", "rewarm.dev/sleep-level": "2"},
                       {"args": ["vllm", "serve", "org/model", "--enable-sleep-mode"],
                        "env": ["HF_HOME=/hf", "VLLM_SERVER_DEV_MODE=1"]}).hooks
    assert [str(c) for c in level2.resume] == ["POST http://127.0.0.1:8000/wake_up?tags=weights",
                                               "POST http://127.0.0.1:8000/collective_rpc",
                                               "POST http://127.0.0.1:8000/wake_up?tags=kv_cache"]
    assert json.loads(level2.resume[1].body) == {"method": "reload_weights"}
    assert level2.reads_back == ("/hf/hub/models--org--model/snapshots",)
    default = ann.parse({"rewarm.dev/snapshot": "v", "rewarm.dev/engine": "vllm"}, VLLM_PROCESS).hooks
    assert [str(c) for c in default.quiesce] == ["POST http://127.0.0.1:8001/sleep?level=2"]          # measured faster
    assert default.reads_back == ("/models/llama",)
    resident = ann.parse({"rewarm.dev/snapshot": "v", "rewarm.dev/engine": "vllm",
                          "rewarm.dev/sleep-level": "weights-resident"}, VLLM_PROCESS).hooks
    assert [str(c) for c in resident.quiesce] == ["POST http://127.0.0.1:8001/sleep?level=2",        # weights back on
                                                  "POST http://127.0.0.1:8001/wake_up?tags=weights",  # the GPU before
                                                  "POST http://127.0.0.1:8001/collective_rpc"]        # the capture
    assert json.loads(resident.quiesce[2].body) == {"method": "reload_weights"}
    assert [str(c) for c in resident.resume] == ["POST http://127.0.0.1:8001/wake_up?tags=kv_cache"]
    assert resident.reads_back == ()   # they travel in the snapshot
    mine = ann.parse({"rewarm.dev/snapshot": "v", "rewarm.dev/engine": "vllm",
                      "rewarm.dev/resume-http": "[\"http://127.0.0.1:9/a\", {\"url\": \"http://127.0.0.1:9/b\", "
                                                 "\"method\": \"GET\"}]"}, VLLM_PROCESS).hooks
    assert [str(c) for c in mine.resume] == ["POST http://127.0.0.1:9/a", "GET http://127.0.0.1:9/b"]   # the annotation wins
    assert [str(c) for c in mine.quiesce] == ["POST http://127.0.0.1:8001/sleep?level=2"]              # the rest is the preset's


SGLANG_PROCESS = {"args": ["python3", "-m", "sglang.launch_server", "--model-path", "/models/qwen", "--port", "30001",
                           "--enable-memory-saver", "--attention-backend", "triton"], "env": []}


def test_the_sglang_preset_releases_and_resumes_its_memory_and_reads_its_model_back():
    hooks = ann.parse({"rewarm.dev/snapshot": "s", "rewarm.dev/engine": "sglang"}, SGLANG_PROCESS).hooks
    assert [str(c) for c in hooks.quiesce] == ["POST http://127.0.0.1:30001/release_memory_occupation"]
    # the weights' memory comes back without its content: read again from the model the server was started with
    assert [str(c) for c in hooks.resume] == ["POST http://127.0.0.1:30001/resume_memory_occupation",
                                              "POST http://127.0.0.1:30001/update_weights_from_disk"]
    assert json.loads(hooks.resume[1].body) == {"model_path": "/models/qwen"}
    assert hooks.ready_http == "http://127.0.0.1:30001/health" and hooks.reads_back == ("/models/qwen",)
    assert "--enable-memory-saver" in hooks.resume[0].hint
    backed_up = ann.parse({"rewarm.dev/snapshot": "s", "rewarm.dev/engine": "sglang"},
                          {"args": [*SGLANG_PROCESS["args"], "--enable-weights-cpu-backup"], "env": []}).hooks
    assert [c.path for c in backed_up.resume] == ["/resume_memory_occupation"] and backed_up.reads_back == ()
    default_port = ann.parse({"rewarm.dev/snapshot": "s", "rewarm.dev/engine": "sglang"},
                             {"args": ["python3", "-m", "sglang.launch_server", "--model", "/m", "--enable-memory-saver"]})
    assert default_port.hooks.ready_http == "http://127.0.0.1:30000/health"


@pytest.mark.parametrize("annotations, process, message", [
    ({"rewarm.dev/sleep-level": "2"}, SGLANG_PROCESS, "rewarm.dev/engine: sglang takes no rewarm.dev/sleep-level"),
    ({}, {"args": ["python3", "-m", "sglang.launch_server", "--model-path", "/m"]},
     "sglang needs --enable-memory-saver on the engine's command line"),
])
def test_an_sglang_preset_it_cannot_answer_is_refused(annotations, process, message):
    with pytest.raises(InvalidInput, match=re.escape(message)):
        ann.parse({"rewarm.dev/snapshot": "s", "rewarm.dev/engine": "sglang", **annotations}, process)


def test_every_engine_of_the_table_names_a_default_mode_it_has():
    for engine in engines.ENGINES.values():
        assert engine.default_mode in engine.modes, engine.name
        assert engine.mode(None) is engine.modes[engine.default_mode]


@pytest.mark.parametrize("process, lacks", [
    ({"args": VLLM_ARGS[:-1], "env": ["VLLM_SERVER_DEV_MODE=1"]}, "needs --enable-sleep-mode on the engine's"),
    ({"args": VLLM_ARGS, "env": ["VLLM_SERVER_DEV_MODE=0"]}, "needs VLLM_SERVER_DEV_MODE=1 in the container's"),
    ({"args": [*VLLM_ARGS, "--port", "http"], "env": ["VLLM_SERVER_DEV_MODE=1"]}, "--port 'http' is not a port"),
])
def test_a_vllm_that_cannot_answer_its_preset_is_refused_with_what_it_lacks(process, lacks):
    with pytest.raises(InvalidInput, match=re.escape(lacks)):
        ann.parse({"rewarm.dev/snapshot": "v", "rewarm.dev/engine": "vllm"}, process)


@pytest.mark.parametrize("value", ["../../evil", "/abs", "", "a/b", "UPPER", "-x", "x" * 64, "a\0b", ".", "sec\n"])
def test_names_that_could_leave_the_store_are_refused(value):
    with pytest.raises(InvalidInput):
        validate_name(value)
    with pytest.raises(InvalidInput):
        ann.namespace_of({"io.kubernetes.cri.sandbox-namespace": value}) if value else validate_namespace(value)


def test_the_namespace_comes_from_containerd_or_cri_o_and_defaults():
    assert ann.namespace_of({"io.kubernetes.cri.sandbox-namespace": "team-a"}) == "team-a"
    assert ann.namespace_of({"io.kubernetes.pod.namespace": "team-b"}) == "team-b"
    assert ann.namespace_of({}) == "default"


def test_a_namespace_given_twice_and_differing_is_refused_never_resolved():
    """Under CRI-O or Podman the workload can set containerd's key too: which one wins must not matter."""
    both = {"io.kubernetes.cri.sandbox-namespace": "victim", "io.kubernetes.pod.namespace": "team-a"}
    with pytest.raises(InvalidInput, match="given twice and differs"):
        ann.namespace_of(both)
    assert ann.namespace_of({**both, "io.kubernetes.pod.namespace": "victim"}) == "victim"
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
    assert env_hashes(["TOKEN=secret", "KUBERNETES_PORT=1", "HOSTNAME=x"], Settings().env_ignore, KEY).keys() == {"TOKEN"}
    assert "secret" not in str(env_hashes(["TOKEN=secret"], [], KEY))
    assert FP.ident() == Fingerprint.from_json(FP.to_json()).ident()


KEY = b"k" * 32


def test_env_values_cannot_be_tried_from_a_fingerprint_without_the_nodes_key():
    """What a pushed snapshot's fingerprint shows of a short secret: nothing a guess can be checked
    against without the key (a plain sha256 of every 4-digit PIN is a 10 000-step search)."""
    shown = env_hashes(["PIN=4711"], [], KEY)["PIN"]
    guesses = {hashlib.sha256(str(pin).encode()).hexdigest()[:len(shown)] for pin in range(10_000)}
    assert shown not in guesses
    assert shown != env_hashes(["PIN=4711"], [], b"another node's key".ljust(32))["PIN"]
    assert env_hashes(["A=1"], [], KEY)["A"] != env_hashes(["B=1"], [], KEY)["B"]      # names are keyed too


def test_a_snapshot_fingerprinted_under_another_key_names_the_key_file():
    recorded = dataclasses.replace(FP, env_key=key_id(KEY))
    here = dataclasses.replace(FP, env_key=key_id(b"x" * 32))
    assert differences(recorded, recorded) == []
    (reason,) = differences(recorded, here)
    assert key_id(KEY) in reason and "fingerprint_key_file" in reason


def test_the_fingerprint_key_is_made_once_owner_only_and_refused_when_others_can_read_it(tmp_path):
    from runtime.host import fingerprint_key
    path = str(tmp_path / "etc" / "fingerprint.key")
    key = fingerprint_key.load(path)
    assert len(key) == 32 and fingerprint_key.load(path) == key
    assert os.stat(path).st_mode & 0o777 == 0o600 and os.listdir(tmp_path / "etc") == ["fingerprint.key"]
    os.chmod(path, 0o644)
    with pytest.raises(SettingsError, match="readable by its owner only"):
        fingerprint_key.load(path)


def test_every_setting_is_in_the_config_schema_and_nothing_else():
    from dataclasses import fields
    from runtime.model.resources import config_json
    assert set(config_json("rewarm-config.schema.json")["properties"]) == {f.name for f in fields(Settings)}


@pytest.mark.parametrize("host, base", [
    ("0.0.0.0", "http://127.0.0.1:8000"), ("::", "http://127.0.0.1:8000"), ("", "http://127.0.0.1:8000"),
    ("::1", "http://[::1]:8000"), ("[::1]", "http://[::1]:8000"), ("10.1.2.3", "http://10.1.2.3:8000"),
    ("engine.local", "http://engine.local:8000"),
])
def test_the_engine_host_is_read_as_a_url_names_it(host, base):
    hooks = ann.parse({"rewarm.dev/snapshot": "v", "rewarm.dev/engine": "vllm"},
                      {"args": [*VLLM_ARGS[:-2], "--enable-sleep-mode", "--host", host],
                       "env": ["VLLM_SERVER_DEV_MODE=1"]}).hooks
    assert hooks.ready_http == base + "/health"


@pytest.mark.parametrize("flag, value, message", [
    ("--port", "²", "--port '²' is not a port"), ("--port", "８０００", "is not a port"),
    ("--port", "0", "is not a port"), ("--port", "65536", "is not a port"),
    ("--host", "h?x", "--host 'h?x' is not a host name or an IP address"),
    ("--host", "[::1", "is not a host name"), ("--host", "a/b", "is not a host name"),
])
def test_an_engine_port_or_host_that_is_no_address_is_refused(flag, value, message):
    with pytest.raises(InvalidInput, match=re.escape(message)):
        ann.parse({"rewarm.dev/snapshot": "v", "rewarm.dev/engine": "vllm"},
                  {"args": [*VLLM_ARGS, flag, value], "env": ["VLLM_SERVER_DEV_MODE=1"]})


@pytest.mark.parametrize("annotations", [
    {"rewarm.dev/snapshot": "x" * 10_000},
    {"rewarm.dev/snapshot": "x", "rewarm.dev/fallback": "y" * 10_000},
    {"rewarm.dev/snapshot": "x", "rewarm.dev/ready-file": "z" * 10_000},
    {"rewarm.dev/snapshot": "x", "rewarm.dev/snapshot-ref": "r" * 10_000},
    {"rewarm.dev/snapshot": "x", "rewarm.dev/quiesce-http": "[" + "1," * 5_000 + "1]"},
])
def test_a_long_invalid_value_is_cut_in_the_reason(annotations):
    with pytest.raises(InvalidInput) as e:
        ann.parse(annotations, {})
    assert len(str(e.value)) < 400   # the pod's log line, the event and the metrics label stay short


def manifest_of(namespace: str, captured_in: str = "", source: dict | None = None) -> Manifest:
    return Manifest(namespace=namespace, name="model", created="2026-12-06T00:00:00Z", fingerprint=FP,
                    fingerprint_id=FP.ident(), source=source or {}, capture=CaptureInfo(namespace=captured_in))


@pytest.mark.parametrize("manifest, readable_from, why", [
    (manifest_of("team-a", "team-a"), ("team-a",), None),
    (manifest_of("team-a"), ("team-a",), None),                          # a local capture of an earlier rewarm
    (manifest_of("team-b", "team-a"), ("team-b",), "captured in namespace team-a"),   # pulled across
    (manifest_of("team-b", "team-a"), ("team-b", "team-a"), None),       # team-a shared by the node
    (manifest_of("team-b", source={"pulled_from": "reg/x:v1"}), ("team-b",), "by an earlier rewarm"),
])
def test_a_snapshot_is_restored_only_in_the_namespace_it_was_captured_in(manifest, readable_from, why):
    found = manifest.unreadable_from(readable_from)
    assert (found is None) if why is None else (why in (found or ""))


def test_namespace_registries_narrow_each_namespace_to_its_own_repositories():
    from runtime.model import registry_ref
    ref = registry_ref.parse("reg:5000/team-a/model:v1")
    anywhere = ("reg:5000",)
    assert registry_ref.refused_for(ref, "team-b", anywhere, ()) is None
    assert registry_ref.refused_for(ref, "team-a", anywhere, ("team-a=reg:5000/team-a",)) is None
    assert "pulls only from reg:5000/team-b" in registry_ref.refused_for(ref, "team-b", anywhere,
                                                                          ("team-b=reg:5000/team-b",))
    assert "pulls only from nowhere" in registry_ref.refused_for(ref, "team-c", anywhere, ("team-a=reg:5000/team-a",))
    assert "does not pull from reg:5000" in registry_ref.refused_for(ref, "team-a", (), ("team-a=reg:5000/team-a",))
    with pytest.raises(SettingsError, match="namespace_registries"):
        from_mapping({"namespace_registries": ["team-a"]})


@pytest.mark.parametrize("extra_args, env, level, says", [
    ([], [], None, "--load-format instanttensor with INSTANTTENSOR_BACKEND=MMAP"),    # vLLM's default loader
    (["--load-format", "safetensors"], [], "2", "1.88 s instead of 3.44 s"),
    (["--load-format=fastsafetensors"], [], None, "KV cache then did not fit"),    # measured: a cold start
    (["--load-format=runai_streamer"], [], None, ""),                               # not measured: no word
    (["--load-format=instanttensor"], [], None, "reads with Direct I/O"),             # its default backend
    (["--load-format=instanttensor"], ["INSTANTTENSOR_BACKEND=AIO"], None, "reads with Direct I/O"),
    (["--load-format=instanttensor"], ["INSTANTTENSOR_BACKEND=MMAP"], None, ""),      # the fast one
    ([], [], "1", ""),                   # level 1: the weights travel in the snapshot, nothing is reloaded
    ([], [], "weights-resident", ""),
])
def test_the_vllm_preset_says_which_loader_would_restore_faster(extra_args, env, level, says):
    annotations = {"rewarm.dev/snapshot": "v", "rewarm.dev/engine": "vllm",
                   **({"rewarm.dev/sleep-level": level} if level else {})}
    hooks = ann.parse(annotations, {"args": [*VLLM_ARGS, *extra_args], "env": ["VLLM_SERVER_DEV_MODE=1", *env]}).hooks
    assert (says in hooks.advice) if says else hooks.advice == ""


def test_a_resume_hook_of_the_users_own_gets_no_loader_advice():
    hooks = ann.parse({"rewarm.dev/snapshot": "v", "rewarm.dev/engine": "vllm",
                       "rewarm.dev/resume-http": "http://127.0.0.1:8001/mine"}, VLLM_PROCESS).hooks
    assert hooks.advice == ""


@pytest.mark.parametrize("namespaces, runc_makes_it", [
    ([{"type": "network"}], True),                                      # runc makes it: the hook's job
    ([{"type": "network", "path": "/srv/c"}], False),     # a pod's: the restore prepares it
    ([{"type": "pid"}], False),                                         # hostNetwork: never touched
])
def test_who_prepares_a_restores_network_namespace(namespaces, runc_makes_it):
    assert oci_spec.runtime_makes_netns({"linux": {"namespaces": namespaces}}) is runc_makes_it


def test_the_mounts_a_restore_must_be_given_again_are_the_bind_mounts():
    spec = {"mounts": [{"destination": "/proc", "type": "proc", "source": "proc"},
                       {"destination": "/dev/shm", "type": "tmpfs", "source": "shm"},
                       {"destination": "/models/", "type": "bind", "source": "/srv/a"},
                       {"destination": "/dev/termination-log", "source": "/srv/b", "options": ["rbind"]}]}
    assert oci_spec.bind_destinations(spec) == {"/models", "/dev/termination-log"}
