"""rewarm through containerd's CRI API (what kubelet calls): real containerd, runc and CRIU.

A private containerd (own root, state, socket, CNI network) gets the rewarm handler from `rewarm install`;
the worker image is built from this machine's files and imported, nothing is pulled.
"""
from __future__ import annotations

import contextlib
import json
import os
import shutil
import sys
import tarfile
import threading
import time

import psutil
import pytest

from helpers import clone_entry, events, rewarm_cli
from runtime.snapshot import store
from runtime.clients import cri
from runtime.lab import containerd_lab, oci_image
from runtime.node import install
from runtime.lab.containerd_lab import CONTAINERD_2_BIN, Lab, Pod
from runtime.lab.runc_lab import WORKER_DIR, rewarm_runc

IMAGE = "localhost/rewarm/warm-worker:test"
OTHER_IMAGE = "localhost/rewarm/warm-worker:other"
COMMAND = ["/usr/bin/python3", "/app/worker.py"]
ENV = {"WARM_SECONDS": "2", "PORT": "8080"}
ENGINE_APP = os.path.join(os.path.dirname(os.path.abspath(__file__)), "workers", "engine_tree")


def rewarm_annotations(name: str, **extra: str) -> dict[str, str]:
    return {"rewarm.dev/snapshot": name, "rewarm.dev/capture": "on-ready", **extra}


# The distribution's containerd (1.6 on Debian 12, 1.7 on 13) and Debian sid's 2.x (packaging/setup.sh).
CONTAINERDS = [pytest.param(None, id="containerd-distro"), pytest.param(CONTAINERD_2_BIN, id="containerd-2")]


@pytest.fixture(scope="module", params=CONTAINERDS)
def cri_lab(request, node, tmp_path_factory):
    shutil.rmtree(os.path.join(node.store, "snapshots"), ignore_errors=True)   # each containerd starts with none
    lab = Lab("tests", rewarm_config=os.environ["REWARM_CONFIG"], bin_dir=request.param).setup(rewarm_runc())
    lab.build_worker_image(IMAGE, WORKER_DIR, [])
    other = str(tmp_path_factory.mktemp("other-app"))
    shutil.copy(os.path.join(WORKER_DIR, "worker.py"), other)
    with open(os.path.join(other, "VERSION"), "w") as f:
        f.write("another build of the same worker\n")
    lab.build_worker_image(OTHER_IMAGE, other, [])
    yield lab
    lab.destroy()


def wait_for_snapshot(node, namespace: str, name: str, timeout: float = 60) -> store.Entry:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        entries = store.Store(node.store).entries(namespace, name)
        if entries:
            return entries[0]
        failed = [e for e in events(node, "capture-failed") if e["snapshot"] == name]
        assert not failed, failed
        time.sleep(0.2)
    raise TimeoutError(f"no snapshot {namespace}/{name} after {timeout}s")


@pytest.fixture(scope="module")
def captured(cri_lab, node):
    """Pod A: cold start on the rewarm handler, captured on ready while it keeps serving."""
    pod = cri_lab.pod("pod-a", IMAGE, COMMAND, annotations=rewarm_annotations("warm"), env=ENV)
    answer, _ = pod.wait_answer()
    entry = wait_for_snapshot(node, "default", "warm")
    yield {"pod": pod, "answer": answer, "entry": entry}
    pod.delete()


def leftovers(container_id: str, pid: int) -> list[str]:
    found = []
    if psutil.pid_exists(pid) and psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
        found.append(f"process {pid}")
    with open("/proc/self/mountinfo") as f:
        found += [f"mount {line.split()[4]}" for line in f if container_id in line]
    for root in ("/sys/fs/cgroup", "/sys/fs/cgroup/memory", "/sys/fs/cgroup/pids", "/sys/fs/cgroup/unified"):
        for dirpath, dirnames, _ in os.walk(root):
            found += [f"cgroup {dirpath}/{d}" for d in dirnames if d == container_id]
            if dirpath.count("/") > 6:
                dirnames.clear()
    found += [f"watcher {p}" for p in containerd_lab.processes_mentioning(container_id)]
    return found


def test_pod_a_keeps_serving_after_its_capture(captured):
    pod, answer = captured["pod"], captured["answer"]
    after = pod.get()
    assert after["boot_id"] == answer["boot_id"] and after["served"] > answer["served"]
    assert captured["entry"].manifest.fingerprint.image.startswith("sha256:")  # named by digest
    assert pod.status().state == cri.pb.CONTAINER_RUNNING


def test_pod_b_is_restored_with_a_warm_state_and_behaves_like_any_pod(cri_lab, captured, node):
    pod = cri_lab.pod("pod-b", IMAGE, COMMAND, annotations=rewarm_annotations("warm"), env=ENV)
    try:
        answer, seconds = pod.wait_answer(timeout=30)
        assert answer["boot_id"] == captured["answer"]["boot_id"]     # A's memory, not a fresh start
        assert answer["cache_file"] == captured["answer"]["state"]    # A's rootfs writes came along
        status = pod.status()
        assert status.state == cri.pb.CONTAINER_RUNNING and status.started_at > 0
        (restored,) = [e for e in events(node, "restored") if e["container"] == pod.container_id]
        assert restored["pod"] == "pod-b" and restored["namespace"] == "default"   # the pod, by name
        shown = rewarm_cli("events", "--pod", "pod-b").stdout.splitlines()    # (each containerd's run has a pod-b)
        assert shown and all("default/pod-b" in line for line in shown), shown
        assert any("restored" in line and f"seconds={restored['seconds']} " in line for line in shown), shown
        deadline = time.monotonic() + 10
        while "served request" not in pod.log() and time.monotonic() < deadline:
            time.sleep(0.1)
        log = pod.log()
        assert "rewarm: restored from snapshot warm" in log and "served request" in log  # B's CRI log file
        exec_result = pod.client.exec_sync(pod.container_id, ["/usr/bin/python3", "-c",
                                                              "print(open('/var/cache/worker/state.json').read())"])
        assert exec_result.exit_code == 0
        assert json.loads(exec_result.stdout) == captured["answer"]["state"]
        pid = pod.pid()
    finally:
        pod.delete()
    deadline = time.monotonic() + 10
    while leftovers(pod.container_id, pid) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert leftovers(pod.container_id, pid) == []
    assert leftovers(pod.pod_id, 0) == []


def test_pod_without_annotations_on_the_rewarm_handler_starts_as_on_runc(cri_lab, captured, node):
    pods = [cri_lab.pod(f"plain-{handler}", IMAGE, COMMAND, env=ENV, handler=handler) for handler in ("rewarm", "runc")]
    try:
        answers = [pod.wait_answer()[0] for pod in pods]
        assert all(a["boot_id"] != captured["answer"]["boot_id"] and a["warm_seconds"] >= 2 for a in answers)
        assert not [e for e in events(node) if e.get("container") == pods[0].container_id]
        assert "rewarm:" not in pods[0].log()
    finally:
        for pod in pods:
            pod.delete()


@pytest.mark.parametrize("namespace,image,reason", [
    ("other", IMAGE, "no snapshot other/warm"),
    ("default", OTHER_IMAGE, "image: snapshot has"),
])
def test_pod_from_another_namespace_or_image_cold_starts_with_the_reason(cri_lab, captured, node,
                                                                         namespace, image, reason):
    pod = cri_lab.pod("pod-d", image, COMMAND, namespace=namespace,
              annotations={"rewarm.dev/snapshot": "warm"}, env=ENV)
    try:
        answer, _ = pod.wait_answer()
        assert answer["boot_id"] != captured["answer"]["boot_id"]
        cold = [e for e in events(node, "cold-start") if e["container"] == pod.container_id]
        assert cold and reason in cold[0]["reason"], cold
        assert "rewarm: cold start" in pod.log() and reason in pod.log()
    finally:
        pod.delete()


def test_on_ready_capture_by_http_readiness(cri_lab, node):
    pod = cri_lab.pod("http-ready", IMAGE, COMMAND, env=ENV, annotations=rewarm_annotations(
        "http-ready", **{"rewarm.dev/ready-http": "http://127.0.0.1:8080/health"}))
    try:
        answer, _ = pod.wait_answer()
        entry = wait_for_snapshot(node, "default", "http-ready")
        assert entry.manifest.source["container_id"] == pod.container_id
        assert pod.get()["boot_id"] == answer["boot_id"]
    finally:
        pod.delete()


def test_two_pods_restore_the_same_snapshot_at_once(cri_lab, captured):
    pods: list[Pod] = []
    threads = [threading.Thread(target=lambda i=i: pods.append(
        cri_lab.pod(f"twin-{i}", IMAGE, COMMAND, annotations=rewarm_annotations("warm"), env=ENV))) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    try:
        assert len(pods) == 2
        for pod in pods:
            assert pod.wait_answer(timeout=30)[0]["boot_id"] == captured["answer"]["boot_id"], pod.log()
    finally:
        for pod in pods:
            pod.delete()


def test_restore_works_after_containerd_restarts(cri_lab, captured):
    cri_lab.restart()
    pod = cri_lab.pod("after-restart", IMAGE, COMMAND, annotations=rewarm_annotations("warm"), env=ENV)
    try:
        assert pod.wait_answer(timeout=30)[0]["boot_id"] == captured["answer"]["boot_id"]
        assert captured["pod"].get()["boot_id"] == captured["answer"]["boot_id"]  # A survived the restart
    finally:
        pod.delete()


def test_a_containerd_restart_in_the_middle_of_a_restoring_create_leaves_a_pod_that_runs_or_nothing(
        cri_lab, node):
    """containerd is restarted while the engine restores a 600 MB worker (containerd's CRI runs the
    runtime's create in StartContainer). The call fails or succeeds; either way the kubelet-like
    cleanup (stop and remove the pod) leaves no process, mount or cgroup, and the next pod restores."""
    env = {**ENV, "BALLAST_MB": "600"}
    source = cri_lab.pod("restart-src", IMAGE, COMMAND, annotations=rewarm_annotations("restart-big"), env=env)
    try:
        answer, _ = source.wait_answer(timeout=120)
        wait_for_snapshot(node, "default", "restart-big", timeout=120)
    finally:
        source.delete()
    client = cri.Client(cri_lab.address)
    config = cri.pod_config("restart-mid", "default", {"rewarm.dev/snapshot": "restart-big"}, cri_lab.logs)
    pod_id = client.run_pod(config, "rewarm")
    outcome: dict[str, object] = {}

    def create() -> None:
        try:
            outcome["id"] = client.create_container(pod_id, cri.container_config(cri.Workload(
                "restart-mid", IMAGE, COMMAND, env=env, annotations={"rewarm.dev/snapshot": "restart-big"}),
                "worker.log"), config)
            client.start_container(str(outcome["id"]))
            outcome["started"] = True
        except cri.CriError as e:
            outcome["error"] = e
    creating = threading.Thread(target=create)
    creating.start()
    deadline = time.monotonic() + 60
    while not any(p.info["name"] == "criu" for p in psutil.process_iter(["name"])) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert creating.is_alive()
    cri_lab.restart()                           # mid-restore: CRIU is filling the worker's memory
    creating.join(120)
    assert not creating.is_alive()
    with cri.Client(cri_lab.address) as after:
        containers = after.list_containers(pod_id)
        pids = []
        for c in containers:
            with contextlib.suppress(cri.CriError, KeyError, ValueError):
                pids.append(int(after.container_info(c.id)["pid"]))
            with contextlib.suppress(cri.CriError):
                after.stop_container(c.id, timeout=5)
                after.remove_container(c.id)
        after.stop_pod(pod_id)
        after.remove_pod(pod_id)
    client.close()
    for c in containers:
        deadline = time.monotonic() + 10
        while leftovers(c.id, 0) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert leftovers(c.id, 0) == []
    assert all(not psutil.pid_exists(p) or psutil.Process(p).status() == psutil.STATUS_ZOMBIE for p in pids)
    assert leftovers(pod_id, 0) == []
    pod = cri_lab.pod("after-mid-restart", IMAGE, COMMAND, annotations={"rewarm.dev/snapshot": "restart-big"},
                      env=env)
    try:
        assert pod.wait_answer(timeout=60)[0]["boot_id"] == answer["boot_id"]
    finally:
        pod.delete()


def test_broken_snapshot_falls_back_to_a_cold_start(cri_lab, captured, node):
    path = clone_entry(node, captured["entry"], "broken")
    pages = next(f for f in os.listdir(os.path.join(path, "checkpoint")) if f.startswith("pages-"))
    with open(os.path.join(path, "checkpoint", pages), "r+b") as f:
        f.seek(100)
        f.write(b"corrupt")
    pod = cri_lab.pod("broken", IMAGE, COMMAND, annotations={"rewarm.dev/snapshot": "broken"}, env=ENV)
    try:
        answer, seconds = pod.wait_answer(timeout=60)
        assert answer["boot_id"] != captured["answer"]["boot_id"]
        cold = [e for e in events(node, "cold-start") if e["container"] == pod.container_id]
        assert cold and "checksum" in cold[0]["reason"], cold
    finally:
        pod.delete()


def test_capture_through_containerds_checkpoint_api_then_restore(cri_lab, node):
    source = cri_lab.pod("bridge-source", IMAGE, COMMAND, env=ENV)
    try:
        answer, _ = source.wait_answer()
        out = rewarm_cli("capture", "--containerd", "--address", cri_lab.address, source.container_id,
                       "--name", "bridged")
        assert out.returncode == 0, out.stderr
        assert source.get()["boot_id"] == answer["boot_id"]   # left running
    finally:
        source.delete()
    entry = store.Store(node.store).entries("default", "bridged")[0]
    assert entry.manifest.fingerprint.image.startswith("sha256:")
    pod = cri_lab.pod("bridge-restored", IMAGE, COMMAND, annotations={"rewarm.dev/snapshot": "bridged"}, env=ENV)
    try:
        assert pod.wait_answer(timeout=30)[0]["boot_id"] == answer["boot_id"]
    finally:
        pod.delete()


def test_bake_captures_a_snapshot_that_pods_restore(cri_lab, node):
    out = rewarm_cli("bake", "--address", cri_lab.address, "--image", IMAGE, "--name", "baked",
                   "--ready-file", "/run/rewarm/ready", "--timeout", "60",
                   "--env", "WARM_SECONDS=2", "--env", "PORT=8080", "--", *COMMAND)
    assert out.returncode == 0, out.stderr + out.stdout
    entry = store.Store(node.store).entries("default", "baked")[0]
    assert entry.path in out.stdout
    phases = [line for line in out.stderr.splitlines() if line.startswith("bake: ")]   # its progress, off a terminal
    assert phases == [f"bake: starting {IMAGE}", "bake: started, warming up until ready; then captured",
                      "bake: captured as default/baked"], out.stderr
    with cri.Client(cri_lab.address) as client:
        assert not [c for c in client.list_containers() if c.metadata.name == "bake-baked"]  # bake removed its pod
    pod = cri_lab.pod("from-bake", IMAGE, COMMAND, annotations={"rewarm.dev/snapshot": "baked"}, env=ENV)
    try:
        answer, _ = pod.wait_answer(timeout=30)
        assert answer["served"] == 1 and answer["warm_seconds"] >= 2   # warm at once: the bake did the work
        assert [e for e in events(node, "restored") if e["container"] == pod.container_id]
    finally:
        pod.delete()


@pytest.mark.parametrize("bin_dir", CONTAINERDS)
def test_install_twice_gives_a_config_containerd_loads_with_the_rewarm_handler(tmp_path, bin_dir):
    lab = Lab("install", bin_dir=bin_dir)
    lab.destroy()
    lab.write_config(rewarm_runc(), with_rewarm=False)
    runs = [rewarm_cli("install", "--runtime", "containerd", "--config", lab.config, "--binary", rewarm_runc())
            for _ in range(2)]
    assert runs[0].returncode == 0 and "+" in runs[0].stdout and "runtimes.rewarm" in runs[0].stdout, runs[0]
    assert runs[1].returncode == 0 and "already" in runs[1].stdout, runs[1]
    assert os.path.exists(lab.config + install.BACKUP_SUFFIX)
    try:
        lab.start()
        info = json.loads(cri.Client(lab.address).status(verbose=True).info["config"])
        handler = info["containerd"]["runtimes"]["rewarm"]
        assert handler["options"]["BinaryName"] == rewarm_runc()
        assert handler["PodAnnotations"] == ["rewarm.dev/*"] and handler["ContainerAnnotations"] == ["rewarm.dev/*"]
    finally:
        lab.destroy()


def test_an_engine_tree_with_the_vllm_preset_is_captured_on_ready_and_restored_whole(cri_lab, node, tmp_path):
    """The engine stand-in (tests/system/workers/engine_tree: vLLM's process tree and dev endpoints)
    as a Kubernetes user would run stock vLLM: its image, its command line, `rewarm.dev/engine: vllm`,
    the model on a read-only volume. Under CRI /dev/shm is the sandbox's, bound in from the host: the
    engine's shared-memory segment there must travel with the snapshot."""
    sys.path.insert(0, ENGINE_APP)
    import engine_site
    site = engine_site.ensure()
    image = "localhost/rewarm/engine-tree:test"
    (tmp_path / "tmp").mkdir()   # zmq's ipc:// sockets go there
    spec = oci_image.ImageSpec(name=image, workdir="/app", env=["PATH=/usr/local/bin:/usr/bin:/bin",
                                                                 "PYTHONPATH=/opt/engine-site"],
                               paths=oci_image.python_paths(packages=(site,)),
                               trees={"/app": ENGINE_APP, "/opt/engine-site": site, "/tmp": str(tmp_path / "tmp")},
                               files={"/etc/passwd": b"root:x:0:0:root:/root:/bin/sh\n", "/etc/group": b"root:x:0:\n"})
    oci_image.build_and_import(spec, cri_lab.address, containerd_lab.NAMESPACE, ctr=cri_lab.tool("ctr"))
    model = tmp_path / "model"
    model.mkdir()
    os.chmod(tmp_path, 0o755)
    (model / "model-00001.bin").write_bytes(os.urandom(8 << 20))
    command = ["/usr/bin/python3", "/app/server.py", "--model", "/models", "--port", "8000", "--enable-sleep-mode"]
    kwargs = dict(annotations={"rewarm.dev/snapshot": "engine", "rewarm.dev/capture": "on-ready",
                               "rewarm.dev/engine": "vllm"},
                  env={"VLLM_SERVER_DEV_MODE": "1", "WARM_SECONDS": "2"}, port=8000,
                  mounts=[(str(model), "/models", True)])
    source = cri_lab.pod("engine-a", image, command, **kwargs)
    try:
        before, _ = source.wait_answer()
        wait_for_snapshot(node, "default", "engine")
        restored = cri_lab.pod("engine-b", image, command, **kwargs)
        try:
            after, _ = restored.wait_answer()
            assert [e["snapshot"] for e in events(node, "restored")][-1:] == ["engine"], events(node)[-1].get("reason")
            assert after["boot_id"] == before["boot_id"] and after["engine"]["engine_pid"] == before["engine"]["engine_pid"]
            prompt = {"prompt": "same warm state?"}
            assert restored.post("/v1/completions", prompt) == source.post("/v1/completions", prompt)
            assert after["calls"] == ["POST /sleep?level=2", "POST /wake_up?tags=weights", "POST /collective_rpc",
                                      "POST /wake_up?tags=kv_cache"] and after["io_uring"] == 0   # the default level
            entry = wait_for_snapshot(node, "default", "engine")
            assert any(m.name.startswith("psm_") for m in tarfile.open(entry.file("dev-shm.tar")).getmembers())
        finally:
            restored.delete()
    finally:
        source.delete()
