"""No frozen pod takes traffic, through containerd's CRI API (what kubelet calls), real runc and CRIU,
with `rewarm agent` posting to the API server stand-in (a real API server cannot run here): a pod
that lists the readiness gate rewarm.dev/ready has the condition False or absent while its
quiesce hook and CRIU hold it, and True once the capture is over and the worker awake; a restored pod
gets it at once; a pod without the gate gets a Warning when its capture begins; a capture Job's
container exits 0 once its snapshot is made, and non-zero, with the reason, when the capture fails.
Every Event carries the pod's uid, which containerd hands rewarm in the container's annotations."""
from __future__ import annotations

import datetime
import os
import shutil
import subprocess
import sys
import threading
import time
import uuid
from typing import Any, Callable, Iterator

import psutil
import pytest

from api_server_stand_in import StandInApiServer
from helpers import events, wait_for
from registry_fixtures import free_port
from runtime.observe import logs
from runtime.snapshot import store
from runtime.clients import cri
from runtime.lab.containerd_lab import CONTAINERD_2_BIN, Lab, Pod
from runtime.lab.runc_lab import WORKER_DIR, rewarm_runc

IMAGE = "localhost/rewarm/warm-worker:gate"
COMMAND = ["/usr/bin/python3", "/app/worker.py"]
ENV = {"WARM_SECONDS": "2", "PORT": "8080"}
GATED_ENV = {**ENV, "BALLAST_MB": "300"}   # memory for CRIU to dump: a capture that holds the pod a while
HOOKS = {"rewarm.dev/quiesce-http": "http://127.0.0.1:8080/sleep", "rewarm.dev/resume-http": "http://127.0.0.1:8080/wake_up"}
GATE = "rewarm.dev/ready"
REWARM = os.path.join(os.path.dirname(sys.executable), "rewarm")
CONTAINERDS = [pytest.param(None, id="containerd-distro"), pytest.param(CONTAINERD_2_BIN, id="containerd-2")]


@pytest.fixture(scope="module", params=CONTAINERDS)
def cri_lab(request, node):
    shutil.rmtree(os.path.join(node.store, "snapshots"), ignore_errors=True)   # each containerd starts with none
    lab = Lab("gate", rewarm_config=os.environ["REWARM_CONFIG"], bin_dir=request.param).setup(rewarm_runc())
    lab.build_worker_image(IMAGE, WORKER_DIR, [])
    yield lab
    lab.destroy()


@pytest.fixture(scope="module")
def api(cri_lab) -> Iterator[StandInApiServer]:
    server = StandInApiServer()
    yield server
    server.close()


@pytest.fixture(scope="module")
def agent(api, node, cri_lab, tmp_path_factory):
    """`rewarm agent` as the DaemonSet runs it, on the node's event log (where the lab's rewarm-runc
    and watchers write)."""
    top = tmp_path_factory.mktemp("agent")
    out, err = open(top / "agent.out", "w"), open(top / "agent.err", "w")
    process = subprocess.Popen([REWARM, "agent", "--node", "gpu-1", "--kubeconfig", api.kubeconfig(str(top / "kc")),
                                "--metrics-port", str(free_port())], stdout=out, stderr=err,
                               env={**os.environ, "REWARM_CONFIG": os.environ["REWARM_CONFIG"]})
    wait_for(lambda: "rewarm agent:" in (top / "agent.out").read_text() or process.poll() is not None)
    assert process.poll() is None, (top / "agent.err").read_text()
    yield process
    process.kill()
    process.wait()
    out.close()
    err.close()


def pod(cri_lab: Lab, api: StandInApiServer, name: str, annotations: dict[str, str],
        gated: bool, **spec: Any) -> tuple[Pod, str]:
    """A lab pod the API server stand-in knows first (with or without the gate), under a uid chosen
    here: kubelet's pods are in the API server before their sandbox runs."""
    uid = str(uuid.uuid4())
    api.add_pod("default", name, uid, gated)
    return cri_lab.pod(name, IMAGE, COMMAND, annotations=annotations, uid=uid, **{"env": ENV, **spec}), uid


def events_of(node, container_id: str, kind: str) -> list[dict]:
    return [e for e in events(node, kind) if e.get("container") == container_id]


def criu_runs() -> bool:
    return any(p.info["name"] == "criu" for p in psutil.process_iter(["name"]))


def logged_at(record: dict) -> float:
    """An event's time (RFC 3339, nanoseconds) as time.time() gives it."""
    return datetime.datetime.fromisoformat(record["time"][:26]).replace(tzinfo=datetime.timezone.utc).timestamp()


class Sampler(threading.Thread):
    """Reads the gate condition the stand-in holds, then whether the pod's `captured` event is in the
    log yet, in that order, every few milliseconds: a True read while no `captured` is in the log
    (read after it) is a True that came before the capture ended."""

    def __init__(self, api: StandInApiServer, name: str, event_log: str) -> None:
        super().__init__(daemon=True)
        self.api, self.name, self.event_log = api, name, event_log
        self.at = logs.end_of(event_log)
        self.samples: list[tuple[str | None, bool, bool]] = []   # (condition status, captured logged, criu ran)
        self.captured: dict | None = None
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.is_set():
            condition = self.api.condition("default", self.name)
            criu = criu_runs()
            self.samples.append((condition and condition["status"], self._captured_logged(), criu))
            time.sleep(0.01)

    def _captured_logged(self) -> bool:
        for line, self.at in logs.lines_after(self.event_log, self.at):
            record = logs.record_of(line)
            if record and record.get("event") == "captured" and record.get("pod") == self.name:
                self.captured = record
        return self.captured is not None


def test_a_gated_pod_is_kept_out_while_its_capture_holds_it_and_let_in_once_the_worker_is_awake(
        cri_lab, api, agent, node):
    sampler = Sampler(api, "gated-a", node.event_log)
    sampler.start()
    source, uid = pod(cri_lab, api, "gated-a", {"rewarm.dev/snapshot": "gated",
                                                             "rewarm.dev/capture": "on-ready", **HOOKS},
                      gated=True, env=GATED_ENV)
    try:
        before, _ = source.wait_answer()
        wait_for(lambda: (api.condition("default", "gated-a") or {}).get("status") == "True", 120, "the gate to open")
        sampler.stop.set()
        sampler.join()
        early = [s for s in sampler.samples if s[0] == "True" and not s[1]]
        assert early == [], "the gate opened before the capture ended"
        held = [s for s in sampler.samples if s[2] and not s[1]]
        assert held and all(s[0] != "True" for s in held), "no look at the gate while CRIU held the pod"
        changes = [(c["status"], c["reason"]) for _, ns, name, c in api.condition_log if name == "gated-a"]
        assert changes == [("False", "CapturePending"), ("False", "Capturing"), ("True", "CaptureDone")], changes
        (opened,) = [t for t, _, name, c in api.condition_log if name == "gated-a" and c["status"] == "True"]
        assert sampler.captured is not None and opened >= logged_at(sampler.captured)
        assert source.get()["boot_id"] == before["boot_id"] and source.get()["wakes"] == 1   # awake, still A
        made = api.events_of("gated-a")
        assert [(e["reason"], e["type"]) for e in made] == [("ColdStart", "Normal"), ("Captured", "Normal")], made
        assert {e["involvedObject"]["uid"] for e in made} == {uid}   # from containerd, through the event log
        assert "no snapshot default/gated in the store yet" in made[0]["message"]
    finally:
        source.delete()


def test_a_restored_gated_pod_is_let_in_at_once(cri_lab, api, agent, node):
    restored, uid = pod(cri_lab, api, "gated-b", {"rewarm.dev/snapshot": "gated",
                                                               "rewarm.dev/capture": "on-ready", **HOOKS},
                        gated=True, env=GATED_ENV)
    try:
        restored.wait_answer()
        assert events_of(node, restored.container_id, "restored"), events_of(node, restored.container_id, "cold-start")
        condition = wait_for(lambda: api.condition("default", "gated-b"), 30, "the gate")
        assert (condition["status"], condition["reason"]) == ("True", "Restored")
        assert [(e["reason"], e["involvedObject"]["uid"]) for e in api.events_of("gated-b")] == [("Restored", uid)]
    finally:
        restored.delete()


def test_a_pod_without_the_gate_gets_a_warning_when_its_capture_begins(cri_lab, api, agent, node):
    source, uid = pod(cri_lab, api, "ungated", {"rewarm.dev/snapshot": "ungated",
                                                             "rewarm.dev/capture": "on-ready"}, gated=False)
    try:
        source.wait_answer()
        store_entry = wait_for(lambda: store.Store(node.store).entries("default", "ungated"), 60, "the snapshot")
        assert store_entry
        warning = wait_for(lambda: [e for e in api.events_of("ungated") if e["reason"] == "CaptureWithoutReadinessGate"],
                           30, "the warning")[0]
        assert warning["type"] == "Warning" and warning["involvedObject"]["uid"] == uid
        assert f"readinessGates: [{{conditionType: {GATE}}}]" in warning["message"]
        assert "on-ready-then-exit" in warning["message"]
        assert api.condition("default", "ungated") is None   # a pod without the gate is not given the condition
    finally:
        source.delete()


def exited(p: Pod, timeout: float = 90) -> Any:
    return wait_for(lambda: (s := p.status()).state == cri.pb.CONTAINER_EXITED and s, timeout, "the container to exit")


@pytest.fixture
def termination_log(tmp_path) -> Callable[[str], str]:
    """A file such as kubelet binds at /dev/termination-log and reads back as the container's message."""
    os.chmod(tmp_path, 0o755)

    def made(name: str) -> str:
        path = tmp_path / name
        path.write_text("")
        return str(path)
    return made


def test_a_capture_job_exits_0_once_its_snapshot_is_made(cri_lab, api, agent, node, termination_log):
    message = termination_log("job")
    job, uid = pod(cri_lab, api, "capture-job", {"rewarm.dev/snapshot": "from-job",
                                                              "rewarm.dev/capture": "on-ready-then-exit"},
                   gated=False, mounts=[(message, "/dev/termination-log", False)])
    try:
        status = exited(job)
        assert status.exit_code == 0, job.log()
        (entry,) = store.Store(node.store).entries("default", "from-job")
        assert entry.manifest.source["container_id"] == job.container_id
        said = open(message).read()
        assert said == ("rewarm: captured as snapshot default/from-job; stopping the worker so that the Job "
                        "completes"), said
        assert said in job.log()                                   # and in the pod's log
        reasons = [e["reason"] for e in wait_for(lambda: len(api.events_of("capture-job")) >= 2 and
                                                 api.events_of("capture-job"), 30, "the Events")]
        assert reasons == ["ColdStart", "Captured"]                # a Job is not warned about the gate
    finally:
        job.delete()
    restored = cri_lab.pod("from-job-restored", IMAGE, COMMAND, annotations={"rewarm.dev/snapshot": "from-job"}, env=ENV,
                           mounts=[(termination_log("restored"), "/dev/termination-log", False)])   # as kubelet's pods have
    try:
        restored.wait_answer(timeout=30)
        assert events_of(node, restored.container_id, "restored")   # what the Job made, a Deployment's pod restores
    finally:
        restored.delete()


def test_a_capture_job_whose_capture_fails_exits_non_zero_with_the_reason(cri_lab, api, agent, node,
                                                                         termination_log):
    job, uid = pod(cri_lab, api, "failing-job", {
        "rewarm.dev/snapshot": "failing-job", "rewarm.dev/capture": "on-ready-then-exit",
        "rewarm.dev/quiesce-http": "http://127.0.0.1:8080/no-such-hook"},   # the worker answers 404: the capture fails
        gated=False, mounts=[(message := termination_log("job"), "/dev/termination-log", False)])
    try:
        status = exited(job)
        assert status.exit_code != 0
        said = open(message).read()
        assert said.startswith("rewarm: capture as snapshot default/failing-job failed: ") and "404" in said, said
        assert said.endswith("; the container exits non-zero so that the Job fails") and said in job.log()
        assert store.Store(node.store).entries("default", "failing-job") == []
        failed = wait_for(lambda: [e for e in api.events_of("failing-job") if e["reason"] == "CaptureFailed"], 30,
                          "the CaptureFailed Event")
        assert len(failed) == 1 and failed[0]["type"] == "Warning" and failed[0]["involvedObject"]["uid"] == uid
        assert len(events_of(node, job.container_id, "capture-failed")) == 1   # one record, one Event
    finally:
        job.delete()


def test_a_proxy_beside_the_worker_is_left_to_runc_where_rewarm_container_names_the_worker(lab, node):
    """A pod's annotations reach all of its containers (through real runc here): with
    rewarm.dev/container naming the worker, the proxy in front of it is neither restored nor
    captured nor watched, and says nothing in the event log or on the pod; the worker is rewarm's."""
    pod_annotations = {"rewarm.dev/snapshot": "with-proxy", "rewarm.dev/capture": "on-ready",
                       "rewarm.dev/container": "vllm"}
    proxy = lab.create("proxy", lab.worker({**pod_annotations, "io.kubernetes.cri.container-name": "proxy"}))
    proxy.wait_ready()
    worker = lab.create("worker", lab.worker({**pod_annotations, "io.kubernetes.cri.container-name": "vllm"}))
    worker.wait_ready()
    assert [e["event"] for e in events(node) if e.get("container") == worker.cid][:1] == ["cold-start"]
    assert [e for e in events(node) if e.get("container") == proxy.cid] == []
    assert "rewarm:" not in proxy.text()


def test_a_gated_pod_whose_worker_did_not_wake_after_its_capture_stays_out(cri_lab, api, agent, node):
    """The capture is made, but the worker's resume hook fails (its wake-up answers 404): the worker
    may be asleep, so the gate stays shut, and a Warning says why."""
    source, uid = pod(cri_lab, api, "not-woken", {
        "rewarm.dev/snapshot": "not-woken", "rewarm.dev/capture": "on-ready",
        "rewarm.dev/quiesce-http": "http://127.0.0.1:8080/sleep",
        "rewarm.dev/resume-http": "http://127.0.0.1:8080/no-such-wake-up"}, gated=True)
    try:
        source.wait_answer()
        wait_for(lambda: store.Store(node.store).entries("default", "not-woken"), 60, "the snapshot")
        made = wait_for(lambda: [e for e in api.events_of("not-woken") if e["reason"] == "Captured"] and
                        api.events_of("not-woken"), 30, "the Captured Event")
        assert [(e["reason"], e["type"]) for e in made] == [("ColdStart", "Normal"), ("WorkerNotWoken", "Warning"),
                                                            ("Captured", "Normal")], made
        assert made[1]["involvedObject"]["uid"] == uid and "404" in made[1]["message"]
        changes = [(c["status"], c["reason"]) for _, _, name, c in api.condition_log if name == "not-woken"]
        assert changes == [("False", "CapturePending"), ("False", "Capturing"), ("False", "WorkerNotWoken")], changes
    finally:
        source.delete()
