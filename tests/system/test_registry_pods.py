"""Snapshots that travel, through containerd's CRI (the kubelet stand-in), against a real registry:
push on capture, pull on miss then restore, a pull that cannot finish in time (cold start now, the
pull goes on, the next pod restores), a registry the node does not allow, a pull while a restore of
the same name runs, and Podman restoring what rewarm pushes and rewarm restoring what Podman pushes."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time

import pytest

from fingerprint_knob import copy_with_fingerprint
from helpers import config_named, events
from private_registry import private_registry
from registry_fixtures import TrickleProxy, synthetic_entry
from runtime.host import settings_file
from runtime.snapshot import store
from runtime.engine import pull
from runtime.lab.containerd_lab import Lab
from runtime.lab.private_node import write_config
from runtime.lab.runc_lab import WORKER_DIR, rewarm_runc
from runtime.model import registry_ref

IMAGE = "localhost/rewarm/warm-worker:registry"
COMMAND = ["/usr/bin/python3", "/app/worker.py"]
ENV = {"WARM_SECONDS": "2", "PORT": "8080"}


@pytest.fixture(scope="module")
def registry(tmp_path_factory):
    yield from private_registry(str(tmp_path_factory.mktemp("registry")), "registry-pods")


@pytest.fixture(scope="module")
def pod_node(node, registry, tmp_path_factory):
    top = str(tmp_path_factory.mktemp("pod-node"))
    auth = registry.auth_file(os.path.join(top, "auth.json"))
    path = write_config(top, registry_ca_file=registry.ca, registry_auth_file=auth,
                        allowed_registries=[f"{registry.address}/rewarm"], pull_timeout_s=60)
    with config_named(path):
        yield path


def settings(path: str):
    return settings_file.load(path)


def set_config(path: str, **changes: object) -> None:
    with open(path) as f:
        cfg = json.load(f)
    cfg.update(changes)
    with open(path, "w") as f:
        json.dump(cfg, f)


@pytest.fixture(scope="module")
def cri_lab(pod_node):
    lab = Lab("registry", rewarm_config=pod_node).setup(rewarm_runc())
    lab.build_worker_image(IMAGE, WORKER_DIR, [])
    yield lab
    lab.destroy()


def annotations(name: str, ref: str, **extra: str) -> dict[str, str]:
    return {"rewarm.dev/snapshot": name, "rewarm.dev/snapshot-ref": ref, **extra}


def wait_until(check, timeout: float = 60, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = check()
        if found:
            return found
        time.sleep(0.2)
    raise TimeoutError(what)


def cold_reason(node, pod) -> str:
    cold = [e for e in events(node, "cold-start") if e["container"] == pod.container_id]
    return cold[0]["reason"] if cold else ""


@pytest.fixture(scope="module")
def captured_and_pushed(cri_lab, pod_node, registry):
    """Pod A: cold start, captured on ready, pushed on capture (rewarm.dev/push: on-capture)."""
    ref = f"{registry.address}/rewarm/worker:v1"
    pod = cri_lab.pod("pushing", IMAGE, COMMAND, env=ENV, annotations=annotations(
        "worker", ref, **{"rewarm.dev/capture": "on-ready", "rewarm.dev/push": "on-capture"}))
    answer, _ = pod.wait_answer()
    node = settings(pod_node)
    pushed = wait_until(lambda: [e for e in events(node, "pushed") if e["snapshot"] == "worker"]
                        or [e for e in events(node, "push-failed") if e["snapshot"] == "worker"], 120, "push")
    assert pushed[0]["event"] == "pushed", pushed
    yield {"pod": pod, "answer": answer, "ref": ref}
    pod.delete()


def drop_local(node, name: str = "worker") -> None:
    store.Store(node.store).remove("default", name)


def test_push_on_capture_puts_the_snapshot_in_the_registry(captured_and_pushed, pod_node):
    node = settings(pod_node)
    entry = store.Store(node.store).entries("default", "worker")[0]
    pushed = [e for e in events(node, "pushed") if e["snapshot"] == "worker"][0]
    assert pushed["entry"] == entry.ident and pushed["ref"] == captured_and_pushed["ref"]


def test_a_pod_on_a_node_without_the_snapshot_pulls_it_then_restores(cri_lab, captured_and_pushed, pod_node):
    node = settings(pod_node)
    drop_local(node)
    pod = cri_lab.pod("pulling", IMAGE, COMMAND, env=ENV, annotations=annotations("worker", captured_and_pushed["ref"]))
    try:
        answer, _ = pod.wait_answer(timeout=60)
        assert answer["boot_id"] == captured_and_pushed["answer"]["boot_id"], cold_reason(node, pod)
        assert [e for e in events(node, "pulled") if e.get("container") == pod.container_id]
        assert [e for e in events(node, "restored") if e["container"] == pod.container_id]
        entry = store.Store(node.store).entries("default", "worker")[0]
        assert entry.manifest.source["pulled_from"] == captured_and_pushed["ref"]
    finally:
        pod.delete()


OTHER_KERNEL = "6.12.99-test-knob"   # the knob: a node of another kernel (fingerprint_knob.py)


def push_as_another_node(node, entry, name: str, ref: str) -> store.Entry:
    """`entry` pushed to `ref` as a node of OTHER_KERNEL would push its capture (then gone from this
    store). Its capture time is older than this node's, so that an operator's pull of `ref` (the
    newest capture) still takes this node's in the tests that follow."""
    other = copy_with_fingerprint(node, entry, name, created="2020-01-01T00:00:00Z", kernel=OTHER_KERNEL)
    out = subprocess.run([os.path.join(os.path.dirname(sys.executable), "rewarm"), "push", name, ref],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    store.Store(node.store).remove(other.namespace, name)
    return other


def test_a_pod_pulls_its_own_fingerprints_snapshot_where_another_nodes_is_on_offer_too(
        cri_lab, captured_and_pushed, pod_node, registry):
    """Another node (another kernel) pushed its capture to the same ref after this one: the ref keeps
    both, and a pod here pulls and restores this node's."""
    node = settings(pod_node)
    ref = captured_and_pushed["ref"]
    own = wait_until(lambda: store.Store(node.store).entries("default", "worker"), 60, "a local entry")[0]
    push_as_another_node(node, own, "worker-other-node", ref)
    drop_local(node)
    pod = cri_lab.pod("pulling-own", IMAGE, COMMAND, env=ENV, annotations=annotations("worker", ref))
    try:
        answer, _ = pod.wait_answer(timeout=60)
        assert answer["boot_id"] == captured_and_pushed["answer"]["boot_id"], cold_reason(node, pod)
        pulled = [e for e in events(node, "pulled") if e.get("container") == pod.container_id]
        pushed = [e for e in events(node, "pushed") if e["snapshot"] == "worker"][0]
        assert pulled and pulled[0]["digest"] == pushed["digest"]     # its own fingerprint's, not the other's
        assert store.Store(node.store).entries("default", "worker")[0].manifest.fingerprint == own.manifest.fingerprint
    finally:
        pod.delete()


def test_a_pod_whose_fingerprint_none_on_offer_fits_cold_starts_naming_the_differences(
        cri_lab, captured_and_pushed, pod_node, registry):
    node = settings(pod_node)
    ref = f"{registry.address}/rewarm/elsewhere:v1"
    own = wait_until(lambda: store.Store(node.store).entries("default", "worker"), 60, "a local entry")[0]
    other = push_as_another_node(node, own, "elsewhere", ref)
    pod = cri_lab.pod("elsewhere", IMAGE, COMMAND, env=ENV, annotations=annotations("elsewhere", ref))
    try:
        assert pod.wait_answer()[0]["boot_id"] != captured_and_pushed["answer"]["boot_id"]
        reason = cold_reason(node, pod)
        assert f"pull of {ref} refused" in reason and "none of its 1 snapshots fits this container" in reason
        assert f"fingerprint {other.manifest.fingerprint.ident()}" in reason
        assert f"kernel: snapshot has '{OTHER_KERNEL}', this container/node has '{own.manifest.fingerprint.kernel}'" \
            in reason
        cold = [e for e in events(node, "cold-start") if e["container"] == pod.container_id][0]
        assert cold["code"] == "not_fitting"                      # the situation's call, not a failure
        assert store.Store(node.store).entries("default", "elsewhere") == []
    finally:
        pod.delete()


def test_push_on_capture_publishes_the_entry_it_captured_though_another_capture_of_the_name_is_newer(
        cri_lab, pod_node, registry):
    """The push runs after the capture, by itself: a second capture of the same name (another
    fingerprint) that commits in between is the name's newest entry. The push publishes the entry
    its own capture made. The second capture is a synthetic entry that the store orders first, as
    it orders one committed later."""
    node = settings(pod_node)
    ref = f"{registry.address}/rewarm/raced:v1"
    decoy = synthetic_entry(node, "raced", os.urandom(1 << 20))    # another container's fingerprint
    later = os.path.join(os.path.dirname(decoy.path), f"{decoy.manifest.fingerprint_id}-{time.time_ns() + 10**15}")
    os.rename(decoy.path, later)
    pod = cri_lab.pod("raced", IMAGE, COMMAND, env=ENV, annotations=annotations(
        "raced", ref, **{"rewarm.dev/capture": "on-ready", "rewarm.dev/push": "on-capture"}))
    try:
        pod.wait_answer()
        done = wait_until(lambda: [e for e in events(node) if e.get("snapshot") == "raced"
                                   and e["event"] in ("pushed", "push-failed")], 120, "push")
        assert done[0]["event"] == "pushed", done
        captured = [e for e in events(node, "captured") if e["snapshot"] == "raced"][0]
        entries = store.Store(node.store).entries("default", "raced")
        assert [e.path for e in entries][0] == later and len(entries) == 2    # the decoy is the newest
        (own,) = [e for e in entries if e.ident == captured["entry"]]
        assert done[0]["entry"] == own.ident and done[0]["fingerprint"] == own.manifest.fingerprint.ident()
        client = pull.client_for(node, registry_ref.parse(ref))
        assert client.find_manifest(registry_ref.fingerprint_tag("v1", decoy.manifest.fingerprint.ident())) is None
        _, manifest = client.get_manifest(registry_ref.fingerprint_tag("v1", own.manifest.fingerprint.ident()))
        with open(own.file("manifest.json"), "rb") as f:
            assert client.blob_bytes(manifest["config"]["digest"], manifest["config"]["size"]) == f.read()
    finally:
        pod.delete()
        store.Store(node.store).remove("default", "raced")


def test_a_pull_that_cannot_finish_in_time_cold_starts_and_the_next_pod_restores(cri_lab, captured_and_pushed,
                                                                                  pod_node):
    node = settings(pod_node)
    drop_local(node)
    set_config(pod_node, pull_timeout_s=0)
    try:
        cold = cri_lab.pod("too-slow", IMAGE, COMMAND, env=ENV, annotations=annotations("worker", captured_and_pushed["ref"]))
        try:
            answer, _ = cold.wait_answer()
            assert answer["boot_id"] != captured_and_pushed["answer"]["boot_id"]
            assert "did not finish within 0s (pull_timeout_s 0s" in cold_reason(node, cold)
            wait_until(lambda: store.Store(node.store).entries("default", "worker"), 60, "background pull")
        finally:
            cold.delete()
        warm = cri_lab.pod("after-background", IMAGE, COMMAND, env=ENV,
                           annotations=annotations("worker", captured_and_pushed["ref"]))
        try:
            assert warm.wait_answer(timeout=30)[0]["boot_id"] == captured_and_pushed["answer"]["boot_id"]
        finally:
            warm.delete()
    finally:
        set_config(pod_node, pull_timeout_s=60)



def test_a_pull_left_in_the_background_ends_with_its_pod(cri_lab, captured_and_pushed, pod_node, registry, tmp_path):
    """The registry trickles (every read within its timeout, no stall within pull_stall_s): the pull
    outlives pull_timeout_s and goes on in the background while the cold-started pod lives; once the
    pod is deleted, its pull ends too, says why, and leaves its part for the next pull to resume."""
    node = settings(pod_node)
    drop_local(node, "trickled")
    proxy = TrickleProxy(registry.port, fast=256 << 10, gap=0.5)
    with open(pod_node) as f:
        saved = json.load(f)
    auth = registry.auth_file(str(tmp_path / "auth.json"), address=proxy.address)
    set_config(pod_node, registry_auth_file=auth, allowed_registries=[f"{proxy.address}/rewarm"], pull_timeout_s=1,
               pull_stall_s=600)
    try:
        pod = cri_lab.pod("trickled", IMAGE, COMMAND, env=ENV,
                          annotations=annotations("trickled", f"{proxy.address}/rewarm/worker:v1"))
        try:
            pod.wait_answer()
            assert "did not finish within 1s (pull_timeout_s 1s" in cold_reason(node, pod)
            assert processes_naming(pod.container_id), "the background pull"
        finally:
            pod.delete()
        wait_until(lambda: not processes_naming(pod.container_id), 20, "the background pull to end")
        ended = [e for e in events(node, "pull-failed") if e.get("container") == pod.container_id]
        assert ended and "its pod's container is gone" in ended[-1]["reason"]
        assert store.Store(node.store).entries("default", "trickled") == []
        kept = [d for d in os.listdir(os.path.join(node.store, "tmp")) if "-trickled-" in d]
        assert kept   # its part, for the next pull to resume from; gc reclaims it, its owner gone
        gc = subprocess.run([os.path.join(os.path.dirname(sys.executable), "rewarm"), "gc", "--max-bytes", "100G"],
                            capture_output=True, text=True, timeout=60)
        assert gc.returncode == 0 and not [d for d in os.listdir(os.path.join(node.store, "tmp")) if "-trickled-" in d]
    finally:
        proxy.close()
        with open(pod_node, "w") as f:
            json.dump(saved, f)


def processes_naming(text: str) -> list[int]:
    """Processes whose command line names `text` (the forked pull keeps its create's argv)."""
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                if text.encode() in f.read():
                    found.append(int(pid))
        except OSError:
            pass
    return found


@pytest.mark.parametrize("ref_of,reason", [
    (lambda r: f"{r.address}/elsewhere/worker:v1", "does not pull from"),      # not under allowed_registries
    (lambda r: "not a reference", "invalid rewarm.dev/snapshot-ref"),
])
def test_a_ref_the_node_refuses_cold_starts_with_the_reason(cri_lab, captured_and_pushed, pod_node, registry,
                                                            ref_of, reason):
    node = settings(pod_node)
    drop_local(node, "refused")
    pod = cri_lab.pod("refused", IMAGE, COMMAND, env=ENV, annotations=annotations("refused", ref_of(registry)))
    try:
        pod.wait_answer()
        assert reason in cold_reason(node, pod) and reason in pod.log()
        assert store.Store(node.store).entries("default", "refused") == []
    finally:
        pod.delete()


def test_a_pull_while_a_restore_of_the_same_name_runs(cri_lab, captured_and_pushed, pod_node):
    node = settings(pod_node)
    wait_until(lambda: store.Store(node.store).entries("default", "worker"), 60, "a local entry")
    results: dict[str, object] = {}

    def pull() -> None:
        time.sleep(0.2)
        results["pull"] = subprocess.run([os.path.join(os.path.dirname(sys.executable), "rewarm"), "pull",
                                          captured_and_pushed["ref"], "--name", "worker"],
                                         capture_output=True, text=True, timeout=120)
    puller = threading.Thread(target=pull)
    puller.start()
    pod = cri_lab.pod("restoring", IMAGE, COMMAND, env=ENV, annotations={"rewarm.dev/snapshot": "worker"})
    try:
        assert pod.wait_answer(timeout=30)[0]["boot_id"] == captured_and_pushed["answer"]["boot_id"]
    finally:
        puller.join()
        pod.delete()
    out = results["pull"]
    assert out.returncode == 0, out.stderr   # type: ignore[attr-defined]
    entries = store.Store(node.store).entries("default", "worker")
    assert len(entries) == 1 and not os.listdir(os.path.join(node.store, "tmp"))



def test_a_snapshot_stays_with_the_namespace_it_was_captured_in_wherever_it_is_pulled(cri_lab, pod_node, registry):
    """team-a's worker is captured and pushed; team-b's pod names the same snapshot and team-a's
    reference: it cold-starts (its memory would be team-a's, secrets included), nothing of team-a's
    enters team-b's store, even by the operator's `rewarm pull`; team-a's own pod on a node without
    the snapshot pulls and restores it; with namespace_registries, team-b's pod makes no request."""
    node = settings(pod_node)
    ref = f"{registry.address}/rewarm/team-a/model:v1"
    source = cri_lab.pod("team-a-src", IMAGE, COMMAND, env=ENV, namespace="team-a", annotations=annotations(
        "model", ref, **{"rewarm.dev/capture": "on-ready", "rewarm.dev/push": "on-capture"}))
    try:
        captured, _ = source.wait_answer()
        wait_until(lambda: [e for e in events(node, "pushed") if e["ref"] == ref], 120, "push")
    finally:
        source.delete()
    entry = store.Store(node.store).entries("team-a", "model")[0]
    assert entry.manifest.captured_in == "team-a" and entry.manifest.capture.namespace == "team-a"

    other = cri_lab.pod("team-b", IMAGE, COMMAND, env=ENV, namespace="team-b", annotations=annotations("model", ref))
    try:
        assert other.wait_answer()[0]["boot_id"] != captured["boot_id"]
        assert "captured in namespace team-a" in cold_reason(node, other)
    finally:
        other.delete()
    assert store.Store(node.store).entries("team-b", "model") == []
    by_hand = subprocess.run([os.path.join(os.path.dirname(sys.executable), "rewarm"), "pull", ref, "--name", "model",
                              "--namespace", "team-b"], capture_output=True, text=True, timeout=120)
    assert by_hand.returncode != 0 and "captured in namespace team-a" in by_hand.stderr, by_hand.stderr
    assert store.Store(node.store).entries("team-b", "model") == [] and not os.listdir(os.path.join(node.store, "tmp"))

    store.Store(node.store).remove("team-a", "model")
    again = cri_lab.pod("team-a", IMAGE, COMMAND, env=ENV, namespace="team-a", annotations=annotations("model", ref))
    try:
        assert again.wait_answer(timeout=60)[0]["boot_id"] == captured["boot_id"], cold_reason(node, again)
    finally:
        again.delete()

    set_config(pod_node, namespace_registries=[f"team-a={registry.address}/rewarm/team-a"])
    try:
        fenced = cri_lab.pod("team-b-fenced", IMAGE, COMMAND, env=ENV, namespace="team-b",
                             annotations=annotations("model", ref))
        try:
            fenced.wait_answer()
            assert "namespace team-b pulls only from nowhere (namespace_registries)" in cold_reason(node, fenced)
            # refused before any pull began: the node's credentials fetched nothing for team-b
            assert not [e for e in events(node) if e.get("container") == fenced.container_id
                        and e["event"] in ("pulled", "pull-failed")]
        finally:
            fenced.delete()
    finally:
        set_config(pod_node, namespace_registries=[])


# --- Podman interop ----------------------------------------------------------------------------
PODMAN_RUN = ["run", "-d", "--network", "none", "--ulimit", "nofile=4096:4096", "--ulimit", "nproc=4096:4096",
              "-e", "WARM_SECONDS=1"]
PODMAN_IMAGE = "localhost/rewarm/warm-worker:podman-registry"


@pytest.fixture(scope="module")
def podman(pod_node, registry, tmp_path_factory):
    from runtime.lab.oci_image import ImageSpec, python_paths, write_archive
    work = tmp_path_factory.mktemp("podman-registry")
    certs = work / "certs" / registry.address
    certs.mkdir(parents=True)
    (certs / "ca.crt").write_bytes(open(registry.ca, "rb").read())
    write_archive(ImageSpec(name=PODMAN_IMAGE, entrypoint=COMMAND, workdir="/app", paths=python_paths(),
                            trees={"/app": WORKER_DIR},
                            files={"/etc/passwd": b"root:x:0:0:root:/root:/bin/sh\n", "/etc/group": b"root:x:0:\n"}),
                  str(work / "image.tar"))

    def run(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        out = subprocess.run(["podman", "--runtime", "runc", *args], capture_output=True, text=True, timeout=300)
        assert out.returncode == 0 or not check, f"podman {' '.join(args)}: {out.stderr}"
        return out
    run("load", "-i", str(work / "image.tar"))
    login = ["--cert-dir", str(certs), "--creds", "rewarm:lab-password"]
    yield run, login
    ours = run("ps", "-aq", "--filter", f"ancestor={PODMAN_IMAGE}", check=False).stdout.split()
    if ours:   # only this module's containers: other tests run Podman containers of their own
        run("rm", "-f", *ours, check=False)
    run("rmi", "-f", PODMAN_IMAGE, check=False)


def podman_answer(run, name: str) -> dict:
    from runtime.netns import netns_http
    pid = run("inspect", "-f", "{{.State.Pid}}", name).stdout.strip()
    # Podman 4.3 restores a --network none container into a network namespace whose loopback is down
    # (its own checkpoint images too); the worker's restored listener answers once it is up.
    subprocess.run(["nsenter", "-t", pid, "-n", "ip", "link", "set", "lo", "up"], check=True)

    def ask():
        status, body = netns_http.request(f"/proc/{pid}/ns/net", "http://127.0.0.1:8080/", timeout=2)
        return json.loads(body) if status == 200 else None
    return wait_until(ask, 30, "podman worker")


def test_rewarm_restores_what_podman_pushes_and_podman_restores_what_rewarm_pushes(podman, pod_node, registry):
    run, login = podman
    node = settings(pod_node)
    run(*PODMAN_RUN, "--name", "podman-source", PODMAN_IMAGE)
    warm = podman_answer(run, "podman-source")
    from_podman = f"{registry.address}/rewarm/podman-checkpoint:v1"
    run("container", "checkpoint", "--create-image", from_podman, "podman-source")
    run("push", *login, from_podman)
    out = subprocess.run([os.path.join(os.path.dirname(sys.executable), "rewarm"), "pull", from_podman,
                          "--name", "from-podman", "--format", "crio"], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    entry = store.Store(node.store).entries("default", "from-podman")[0]
    assert entry.manifest.source["pulled_from"] == from_podman and entry.manifest.fingerprint.args == tuple(COMMAND)

    to_podman = f"{registry.address}/rewarm/from-rewarm:v1"
    out = subprocess.run([os.path.join(os.path.dirname(sys.executable), "rewarm"), "push", "from-podman", to_podman,
                          "--format", "crio"], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    run("rm", "-f", "podman-source")
    run("rmi", "-f", from_podman, check=False)
    try:
        run("pull", *login, to_podman)
        run("container", "restore", to_podman)
        restored = podman_answer(run, "podman-source")
        assert restored["boot_id"] == warm["boot_id"] and restored["served"] == warm["served"] + 1
    finally:   # nothing of the test is left in Podman's store
        run("rm", "-f", "podman-source", check=False)
        run("rmi", "-f", to_podman, check=False)
