"""Every way a restore does not happen carries a reason code set where the engine decides: the
restore's steps (against test_restore_steps' fake runc), the exceptions the layers below the engine raise, the pull
on miss, and a whole create through rewarm-runc-engine, whose cold start lands in the event log
with its code and, through rewarm-hook poststop, in the metrics textfile as the `code` label."""
from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import time

import pytest
from prometheus_client.parser import text_string_to_metric_families

from runtime.observe import logs
from runtime.engine import pull, restore, wanted
from runtime.lab.private_node import write_config
from runtime.model import annotations as ann
from runtime.model.errors import (ClientError, GpuMismatch, InvalidInput, NotRestorable, PullRefused, RestoreFailed,
                                  SettingsError, SnapshotDamaged, StoreError, TransferInterrupted, UnsafeRootfsDiff,
                                  code_of)
from runtime.model.events import ReasonCode
from runtime.model.settings import Settings
from test_restore_steps import World  # the fake runc at the adapter seam

CHECKOUT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.fixture
def world(tmp_path) -> World:
    return World(tmp_path)


def code_of_restore(world: World, deadline: float = float("inf"), settings: Settings | None = None) -> ReasonCode:
    from runtime.container.spec_file import SpecFile
    with pytest.raises((NotRestorable, RestoreFailed)) as raised:
        node = settings or world.settings
        request = ann.parse(world.spec["annotations"], world.spec["process"])
        restore.restore(world.call, node, SpecFile(str(world.bundle)), wanted.of(world.spec, node, request, "default"),
                        deadline)
    return raised.value.reason_code


def test_no_entry_is_no_snapshot_and_an_entry_of_other_args_is_not_fitting(world):
    assert code_of_restore(world) is ReasonCode.NO_SNAPSHOT
    world.capture(args=("/w", "--other"))
    assert code_of_restore(world) is ReasonCode.NOT_FITTING


def test_a_corrupt_entry_is_snapshot_damaged(world):
    from runtime.snapshot import store
    entry = world.capture()
    with open(entry.file("checkpoint/pages-1.img"), "r+b") as f:
        f.write(b"X")
    os.unlink(entry.file(store.VERIFIED_FILE))
    assert code_of_restore(world) is ReasonCode.SNAPSHOT_DAMAGED


def test_an_existing_container_and_a_terminal_are_refused_with_their_codes(world):
    world.capture()
    world.spec["process"]["terminal"] = True
    from runtime.host.files import write_json
    write_json(str(world.bundle / "config.json"), world.spec, mode=0o644)
    assert code_of_restore(world) is ReasonCode.UNSUPPORTED
    world.spec["process"]["terminal"] = False
    write_json(str(world.bundle / "config.json"), world.spec, mode=0o644)
    (world.root / "c1").mkdir()
    (world.root / "c1" / "state.json").write_text("{}")
    assert code_of_restore(world) is ReasonCode.CONTAINER_EXISTS


def test_the_runtimes_failure_its_timeout_and_a_failed_resume_hook_have_codes_of_their_own(world, monkeypatch):
    world.capture()
    monkeypatch.setenv("FAKE_RESTORE", "fail")
    assert code_of_restore(world) is ReasonCode.RESTORE_FAILED
    monkeypatch.delenv("FAKE_RESTORE")
    slow = world.bin / "slow-runc"   # the fake runc, whose restore outlasts the create's budget
    slow.write_text(f'#!/bin/bash\ncase " $* " in *" restore "*) sleep 30 ;; esac\nexec {world.bin / "runc"} "$@"\n')
    slow.chmod(0o755)
    settings = dataclasses.replace(world.settings, runtime=str(slow))
    assert code_of_restore(world, time.monotonic() + 0.5, settings) is ReasonCode.TIMEOUT
    world.spec["annotations"][ann.RESUME_HTTP] = "http://127.0.0.1:9/resume"   # nothing listens there
    assert code_of_restore(world) is ReasonCode.RESUME_FAILED


@pytest.mark.parametrize("error, code", [
    (SnapshotDamaged("x"), ReasonCode.SNAPSHOT_DAMAGED),
    (UnsafeRootfsDiff("x"), ReasonCode.UNSAFE_ROOTFS),
    (GpuMismatch("x"), ReasonCode.GPU_MISMATCH),
])
def test_what_the_layers_below_find_keeps_its_code_when_it_becomes_a_cold_start(error, code):
    with pytest.raises(NotRestorable) as raised, restore._not_here():
        raise error
    assert raised.value.reason_code is code and str(raised.value) == "x"


@pytest.mark.parametrize("error, code", [
    (InvalidInput("rewarm.dev/capture: 'x'"), ReasonCode.INVALID_ANNOTATION),
    (SettingsError("unknown key"), ReasonCode.INVALID_CONFIG),
    (StoreError("x"), ReasonCode.STORE_ERROR),
    (ClientError("x"), ReasonCode.CONTAINERD_ERROR),
    (PullRefused("x"), ReasonCode.PULL_REFUSED),
    (TransferInterrupted("x"), ReasonCode.TRANSFER_INTERRUPTED),
    (RestoreFailed("x", code=ReasonCode.TIMEOUT), ReasonCode.TIMEOUT),   # a raise site's own code wins
    (PermissionError(13, "denied"), ReasonCode.SYSTEM_ERROR),
    (KeyError("a bug"), ReasonCode.UNEXPECTED),
])
def test_every_exception_has_one_code(error, code):
    assert code_of(error) is code


def test_a_pull_on_miss_the_node_refuses_is_pull_refused_and_a_failed_ones_answer_says_which(world):
    from runtime.model.settings import from_mapping
    settings = from_mapping({**world.settings.to_json(), "allowed_registries": ["registry.example.com"]})
    request = ann.parse({**world.spec["annotations"], ann.SNAPSHOT_REF: "elsewhere.example.com/w:1"},
                        world.spec["process"])
    with pytest.raises(NotRestorable) as raised:
        pull.on_miss(settings, wanted.of(world.spec, settings, request, "default"), pull.Pod("c1", str(world.root)),
                     time.monotonic() + 5)
    assert raised.value.reason_code is ReasonCode.PULL_REFUSED
    assert pull._failure_of("failed pull_refused x is not signed") == (ReasonCode.PULL_REFUSED, "x is not signed")
    assert pull._failure_of("failed registry_error 503") == (ReasonCode.REGISTRY_ERROR, "503")
    assert pull._failure_of("") == (ReasonCode.UNKNOWN, "")


def create(world: World, config: str, annotations: dict[str, str], cid: str) -> subprocess.CompletedProcess[str]:
    """rewarm-runc-engine's create, as rewarm-runc hands it over, of a bundle with `annotations`."""
    from runtime.host.files import write_json
    write_json(str(world.bundle / "config.json"), {**world.spec, "annotations": annotations}, mode=0o644)
    return subprocess.run([sys.executable, "-m", "runtime.engine.runc_entry", "--root", str(world.root), "create",
                           "--bundle", str(world.bundle), cid], cwd=CHECKOUT, capture_output=True, text=True,
                          env={**os.environ, "REWARM_CONFIG": config}, timeout=60)


def test_a_creates_cold_start_is_recorded_and_counted_by_its_code(world, tmp_path):
    os.makedirs(tmp_path / "node")
    config = write_config(str(tmp_path / "node"), runtime=world.settings.runtime, criu=world.settings.criu,
                          criu_plugin_dir="")
    with open(config) as f:
        cfg = json.load(f)
    assert create(world, config, {ann.SNAPSHOT: "warm"}, "cold-1").returncode == 0
    assert create(world, config, {ann.SNAPSHOT: "warm", ann.CAPTURE: "sometimes"}, "bad-1").returncode == 0
    refused = create(world, config, {ann.SNAPSHOT: "warm", ann.FALLBACK: "fail"}, "must-1")
    assert refused.returncode == 1
    starts = {e["container"]: (e["event"], e["code"]) for e in logs.read_events(cfg["event_log"])}
    assert starts == {"cold-1": ("cold-start", "no_snapshot"), "bad-1": ("cold-start", "invalid_annotation"),
                      "must-1": ("restore-refused", "no_snapshot")}
    state = {"ociVersion": "1.0.2", "id": "cold-1", "annotations": {ann.SNAPSHOT: "warm"}}
    hook = subprocess.run([sys.executable, "-c", "from oci_hooks.main import main; main()", "poststop"],
                          input=json.dumps(state), cwd=CHECKOUT, capture_output=True, text=True, timeout=60,
                          env={**os.environ, "REWARM_CONFIG": config, "REWARM_RUNTIME_ROOT": str(world.root)})
    assert hook.returncode == 0, hook.stderr
    with open(cfg["metrics_file"]) as f:
        served = {(s.name, tuple(sorted(s.labels.items()))): s.value
                  for family in text_string_to_metric_families(f.read()) for s in family.samples}
    labels = (("namespace", "default"), ("snapshot", "warm"))
    assert served[("rewarm_cold_starts_total", (("code", "no_snapshot"), *labels))] == 1
    assert served[("rewarm_cold_starts_total", (("code", "invalid_annotation"), *labels))] == 1
    assert served[("rewarm_restores_refused_total", (("code", "no_snapshot"), *labels))] == 1
    assert not [key for key in served if key[0] == "rewarm_restore_failures_total"]   # nothing broke
    assert served[("rewarm_containers_stopped_total", (("outcome", "cold"),))] == 1
    assert served[("rewarm_store_entries", ())] == 0   # the store is there (CRIU's config), with no entry
