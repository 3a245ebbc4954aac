"""One Deployment scaled over three nodes, as a platform team runs it: a capture Job on node A
captures the worker, pushes it and exits 0; a serving pod on node B restores it by pull on a miss; a
pod on node C, whose fingerprint differs, cold-starts, is captured behind the readiness gate and
pushes its own snapshot beside A's, which B still pulls and restores afterwards.

Each node is a private containerd (through its CRI API, what kubelet calls) with rewarm's handler,
its own rewarm config, store and event log, and its own `rewarm agent` posting to one API server
stand-in (a real API server cannot run here). The registry is Debian's docker-registry (TLS, login).
The knob that makes node C's fingerprint differ is named: its runtime is runc behind a wrapper that
reports another runc version (a node pool of mixed runc versions), which the fingerprint records.
"""
from __future__ import annotations

import datetime
import os
import shutil
import subprocess
import sys
import uuid
from dataclasses import dataclass
from typing import Iterator

import pytest

from api_server_stand_in import StandInApiServer
from helpers import wait_for
from private_registry import private_registry
from registry_fixtures import free_port
from runtime.host import settings_file
from runtime.observe import logs
from runtime.snapshot import store
from runtime.clients import cri
from runtime.lab.containerd_lab import Lab, Pod
from runtime.lab.private_node import write_config
from runtime.lab.runc_lab import WORKER_DIR, rewarm_runc
from runtime.model.settings import Settings

IMAGE = "localhost/rewarm/warm-worker:scale-out"
COMMAND = ["/usr/bin/python3", "/app/worker.py"]
ENV = {"WARM_SECONDS": "2", "PORT": "8080", "BALLAST_MB": "200"}
HOOKS = {"rewarm.dev/quiesce-http": "http://127.0.0.1:8080/sleep", "rewarm.dev/resume-http": "http://127.0.0.1:8080/wake_up"}
REWARM = os.path.join(os.path.dirname(sys.executable), "rewarm")
OTHER_RUNC_VERSION = "runc version 1.1.99-test-knob"   # node C's runtime, as its fingerprint records it


@dataclass
class Node:
    name: str
    settings: Settings
    lab: Lab
    agent: subprocess.Popen[bytes]

    def records(self, kind: str, pod: Pod) -> list[dict]:
        return [e for e in logs.read_events(self.settings.event_log)
                if e["event"] == kind and e.get("container") == pod.container_id]


@pytest.fixture(scope="module")
def registry(tmp_path_factory):
    yield from private_registry(str(tmp_path_factory.mktemp("registry")), "scale-out")


@pytest.fixture(scope="module")
def api() -> Iterator[StandInApiServer]:
    server = StandInApiServer()
    yield server
    server.close()


def knob_runtime(top: str) -> str:
    """runc behind a wrapper that reports another version: node C's runtime."""
    path = os.path.join(top, "runc")
    with open(path, "w") as f:
        f.write(f'#!/bin/sh\n[ "$1" = --version ] && {{ echo "{OTHER_RUNC_VERSION}"; exit 0; }}\n'
                f'exec {shutil.which("runc")} "$@"\n')
    os.chmod(path, 0o755)
    return path


@pytest.fixture(scope="module")
def nodes(node, registry, api, tmp_path_factory) -> Iterator[dict[str, Node]]:
    made: dict[str, Node] = {}
    try:
        for name in ("a", "b", "c"):
            top = str(tmp_path_factory.mktemp(f"node-{name}"))
            os.chmod(top, 0o755)
            config = write_config(top, registry_ca_file=registry.ca,
                                  registry_auth_file=registry.auth_file(os.path.join(top, "auth.json")),
                                  allowed_registries=[f"{registry.address}/rewarm"],
                                  **({"runtime": knob_runtime(top)} if name == "c" else {}))
            lab = Lab(f"scale-{name}", rewarm_config=config).setup(rewarm_runc())
            lab.build_worker_image(IMAGE, WORKER_DIR, [])
            out = open(os.path.join(top, "agent.out"), "w")
            agent = subprocess.Popen([REWARM, "agent", "--node", f"node-{name}", "--kubeconfig",
                                      api.kubeconfig(os.path.join(top, "kubeconfig")), "--metrics-port", str(free_port())],
                                     stdout=out, stderr=subprocess.STDOUT, env={**os.environ, "REWARM_CONFIG": config})
            made[name] = Node(name, settings_file.load(config), lab, agent)
            wait_for(lambda: "rewarm agent:" in open(out.name).read() or agent.poll() is not None, 60, "the agent")
            assert agent.poll() is None, open(out.name).read()
        yield made
    finally:
        for n in made.values():
            n.agent.kill()
            n.agent.wait()
            n.lab.destroy()


def start(n: Node, api: StandInApiServer, name: str, annotations: dict[str, str], gated: bool,
          termination_log: bool = True) -> tuple[Pod, str]:
    """A pod the API server knows first (kubelet's pods are there before their sandbox runs), with
    the uid the API server gave it, on node `n`, with a termination log as kubelet binds one into
    every container (unless told otherwise)."""
    uid = str(uuid.uuid4())
    api.add_pod("default", name, uid, gated)
    log = os.path.join(os.path.dirname(n.settings.store), f"termination-{name}")
    open(log, "w").close()
    mounts = [(log, "/dev/termination-log", False)] if termination_log else []
    return n.lab.pod(name, IMAGE, COMMAND, annotations=annotations, env=ENV, uid=uid, mounts=mounts), uid


def logged_at(record: dict) -> float:
    return datetime.datetime.fromisoformat(record["time"][:26]).replace(tzinfo=datetime.timezone.utc).timestamp()


def gate_changes(api: StandInApiServer, pod: str) -> list[tuple[float, str, str]]:
    return [(t, c["status"], c["reason"]) for t, _, name, c in api.condition_log if name == pod]


def said(api: StandInApiServer, pod: str, count: int) -> list[tuple[str, str, str]]:
    """(reason, type, uid) of the pod's Events, once `count` of them are there."""
    made = wait_for(lambda: len(api.events_of(pod)) >= count and api.events_of(pod), 30, f"{count} Events on {pod}")
    return [(e["reason"], e["type"], e["involvedObject"].get("uid", "")) for e in made]


def test_a_capture_job_serves_replicas_on_other_nodes_and_a_node_of_another_fingerprint_adds_its_own(
        nodes, api, registry):
    a, b, c = nodes["a"], nodes["b"], nodes["c"]
    ref = f"{registry.address}/rewarm/model:v1"
    serving = {"rewarm.dev/snapshot": "model", "rewarm.dev/snapshot-ref": ref, **HOOKS}   # the Deployment's pods

    # node A: the capture Job captures, pushes and exits 0
    job, job_uid = start(a, api, "model-capture", {**serving, "rewarm.dev/capture": "on-ready-then-exit",
                                                   "rewarm.dev/push": "on-capture"}, gated=False)
    try:
        captured_boot = job.wait_answer()[0]["boot_id"]
        exited = wait_for(lambda: (s := job.status()).state == cri.pb.CONTAINER_EXITED and s, 180, "the Job to exit")
        assert exited.exit_code == 0, job.log()
        (cold,) = a.records("cold-start", job)
        assert cold["code"] == "no_snapshot" and "no snapshot there yet" in cold["reason"], cold
        assert a.records("pushed", job), logs.read_events(a.settings.event_log)
        assert said(api, "model-capture", 3) == [("ColdStart", "Normal", job_uid), ("Captured", "Normal", job_uid),
                                                 ("SnapshotPushed", "Normal", job_uid)]
    finally:
        job.delete()

    # node B, which has never seen the snapshot: a serving pod restores it by pull on a miss
    replica, replica_uid = start(b, api, "model-b1", serving, gated=True)
    try:
        answer, _ = replica.wait_answer()
        assert answer["boot_id"] == captured_boot and answer["wakes"] == 1, b.records("cold-start", replica)
        (restored,) = b.records("restored", replica)
        assert b.records("pulled", replica)
        opened = wait_for(lambda: gate_changes(api, "model-b1"), 30, "the gate")
        assert [(s, r) for _, s, r in opened] == [("True", "Restored")]
        assert opened[0][0] >= logged_at(restored)           # never Ready before CRIU and the resume hook are done
        assert said(api, "model-b1", 2) == [("SnapshotPulled", "Normal", replica_uid), ("Restored", "Normal", replica_uid)]
    finally:
        replica.delete()

    # node C, another runc version: A's snapshot does not fit; it cold-starts, is captured behind
    # the gate and pushes its own
    other, other_uid = start(c, api, "model-c1", {**serving, "rewarm.dev/capture": "on-ready",
                                                  "rewarm.dev/push": "on-capture"}, gated=True)
    try:
        own_boot = other.wait_answer()[0]["boot_id"]
        assert own_boot != captured_boot
        (cold,) = c.records("cold-start", other)
        assert cold["code"] == "not_fitting" and "runtime:" in cold["reason"] and OTHER_RUNC_VERSION in cold["reason"]
        pushed = wait_for(lambda: c.records("pushed", other) or c.records("push-failed", other), 180, "C's push")
        assert pushed[0]["event"] == "pushed", pushed
        (captured,) = c.records("captured", other)
        changes = wait_for(lambda: (g := gate_changes(api, "model-c1")) and g[-1][1] == "True" and g, 60, "the gate")
        assert [(s, r) for _, s, r in changes] == [("False", "CapturePending"), ("False", "Capturing"),
                                                   ("True", "CaptureDone")]
        assert changes[-1][0] >= logged_at(captured)         # shut while the quiesce hook and CRIU held it
        assert other.get()["boot_id"] == own_boot and other.get()["wakes"] == 1
        assert said(api, "model-c1", 3) == [("ColdStart", "Normal", other_uid), ("Captured", "Normal", other_uid),
                                            ("SnapshotPushed", "Normal", other_uid)]
    finally:
        other.delete()

    # both snapshots stay on offer: B, emptied, restores A's again; C restores its own by pull too
    for n, name, boot in ((b, "model-b2", captured_boot), (c, "model-c2", own_boot)):
        store.Store(n.settings.store).remove("default", "model")
        again, _ = start(n, api, name, serving, gated=True)
        try:
            answer, _ = again.wait_answer()
            assert answer["boot_id"] == boot, n.records("cold-start", again)
            assert n.records("pulled", again) and n.records("restored", again)
        finally:
            again.delete()

    # a pod whose volumes are not the capture's is refused before CRIU runs, saying which
    bare, _ = start(b, api, "model-b3", serving, gated=True, termination_log=False)
    try:
        assert bare.wait_answer()[0]["boot_id"] != captured_boot
        (cold,) = b.records("cold-start", bare)
        assert cold["code"] == "not_fitting" and "mounts this one lacks: /dev/termination-log" in cold["reason"], cold
    finally:
        bare.delete()
