"""`rewarm agent` turns the event log into Kubernetes Events on the pods, keeps the readiness gate
of the pods that list it, and serves /metrics and /readyz. A Kubernetes API server cannot run here: a
stand-in at the agent's seam (the API's HTTP routes for core/v1 Events, a node's labels, a pod and
its status, answering as the API server does, or as a broken one does) records what the agent does.
What an operator relies on: each Event reaches the API server exactly once, on the pod's uid, a
Warning only where something broke; a gated pod takes no traffic while rewarm holds it and does once
it is done; the agent stays up and small whatever the API server answers, /readyz tells whether its
calls get through, and neither a scrape nor the follower reads the whole event log. Through a real
pod (containerd, runc, CRIU): test_readiness_gate.py."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from typing import Callable, Iterator

import pytest

from api_server_stand_in import StandInApiServer
from helpers import config_named
from registry_fixtures import free_port
from runtime.observe import logs
from runtime.lab.private_node import write_config
from runtime.model.events import EventKind

REWARM = os.path.join(os.path.dirname(sys.executable), "rewarm")
AGENT_HWM_MB = 120   # the agent (python, the kubernetes client, prometheus_client) holds about 50 MB


@pytest.fixture
def api() -> Iterator[StandInApiServer]:
    server = StandInApiServer()
    yield server
    server.close()


def wait_for(predicate: Callable[[], object], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


class Agent:
    """`rewarm agent` as the DaemonSet runs it, with its own config (event log) and output files."""

    def __init__(self, api: StandInApiServer, top: str, *args: str, **config: object) -> None:
        os.makedirs(top, exist_ok=True)
        self.config = write_config(top, **config)
        with open(self.config) as f:
            self.event_log = json.load(f)["event_log"]
        self.port = free_port()
        self.out, self.err = os.path.join(top, "agent.out"), os.path.join(top, "agent.err")
        self.argv = [REWARM, "agent", "--node", "gpu-1", "--kubeconfig", api.kubeconfig(os.path.join(top, "kubeconfig")),
                     "--metrics-port", str(self.port), *args]
        self.start()

    def start(self) -> None:
        with open(self.out, "w") as out, open(self.err, "w") as err:   # files: a pipe nobody reads would block it
            self.process = subprocess.Popen(self.argv, stdout=out, stderr=err,
                                            env={**os.environ, "REWARM_CONFIG": self.config})

    def said(self) -> str:
        with open(self.out) as f:
            return f.read()

    def following(self) -> None:
        wait_for(lambda: "rewarm agent:" in self.said() or self.process.poll() is not None)
        assert self.process.poll() is None, open(self.err).read()

    def get(self, path: str) -> tuple[int, str]:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}{path}", timeout=10) as r:
                return r.status, r.read().decode()
        except urllib.error.HTTPError as e:
            return e.code, e.read().decode()

    def ready(self) -> bool:
        return self.get("/readyz")[0] == 200

    def event(self, pod: str, kind: EventKind = EventKind.RESTORED, **fields: object) -> None:
        with config_named(self.config):   # the writer's bound is the one this agent's node config names
            logs.event(self.event_log, kind, **{"container": f"c-{pod}", "namespace": "agent-a", "pod": pod,
                                                "pod_uid": f"uid-{pod}", "snapshot": "llama", "seconds": 1.0,
                                                **fields})

    def hwm_mb(self) -> float:
        """The most resident memory the agent has had (VmHWM)."""
        with open(f"/proc/{self.process.pid}/status") as f:
            line = next(line for line in f if line.startswith("VmHWM:"))
        return int(line.split()[1]) / 1024

    def stop(self) -> None:
        self.process.kill()
        self.process.wait()


@pytest.fixture
def agents(api: StandInApiServer, tmp_path) -> Iterator[Callable[..., Agent]]:
    started: list[Agent] = []

    def start(*args: str, **config: object) -> Agent:
        started.append(Agent(api, str(tmp_path / f"agent{len(started)}"), *args, **config))
        return started[-1]
    yield start
    for agent in started:
        agent.stop()


def made_once(api: StandInApiServer, pods: list[str]) -> bool:
    """Each pod's Event was made by the API server, and none twice."""
    return sorted(data["involvedObject"]["name"] for _, data in api.posted) == sorted(pods)


def test_the_agent_posts_restores_cold_starts_and_captures_as_events_on_their_pods(agents, api):
    agent = agents("--label")
    wait_for(lambda: "labelled rewarm.dev/runtime=ready" in agent.said())
    agent.following()
    assert api.patched == [("/api/v1/nodes/gpu-1", {"metadata": {"labels": {"rewarm.dev/runtime": "ready"}}})]
    agent.event("vllm-0", stages={"criu": 1.2, "cuda_restore": 0.9, "resume": 0.4}, seconds=2.61)
    agent.event("vllm-1", EventKind.COLD_START, code="not_fitting",
                reason="snapshot agent-a/llama does not fit this container: image")
    agent.event("sg-0", EventKind.CAPTURED, bytes=3 << 30)
    with config_named(agent.config):
        logs.event(agent.event_log, EventKind.WARMED, namespace="agent-a", snapshot="llama")   # not a pod's news
    agent.event("sg-1", EventKind.CAPTURED)                     # the last: all before it were looked at
    wait_for(lambda: "rewarm_agent_events_posted_total 4.0" in agent.get("/metrics")[1])
    assert made_once(api, ["vllm-0", "vllm-1", "sg-0", "sg-1"])
    by_reason = {body["reason"]: (path, body) for path, body in api.posted}
    path, restored = by_reason["Restored"]
    assert path == "/api/v1/namespaces/agent-a/events" and restored["type"] == "Normal"
    assert restored["involvedObject"] == {"kind": "Pod", "apiVersion": "v1", "name": "vllm-0", "namespace": "agent-a",
                                          "uid": "uid-vllm-0"}   # what `kubectl describe pod` looks Events up by
    assert "restored from snapshot llama in 2.61s (criu 1.20s" in restored["message"]
    assert restored["source"] == {"component": "rewarm", "host": "gpu-1"}
    _, cold = by_reason["ColdStart"]
    assert cold["type"] == "Normal" and "does not fit this container: image" in cold["message"]   # expected after an upgrade
    assert any("3.00 GiB" in body["message"] for _, body in api.posted)
    scraped = agent.get("/metrics")[1]
    assert 'rewarm_restores_total{namespace="agent-a",snapshot="llama"} 1.0' in scraped
    assert 'rewarm_cold_starts_total{code="not_fitting",namespace="agent-a",snapshot="llama"} 1.0' in scraped
    assert agent.get("/readyz") == (200, "ready: 4 Events posted\n")


@pytest.mark.parametrize("answer", ["empty", "not-json", "huge"])
def test_an_api_server_answering_nonsense_or_200_mb_leaves_the_agent_posting_and_small(agents, api, answer):
    """A 201 with no body, with an HTML page or with 200 MB: the Event was made, and the agent
    reads no more of the answer than an Event's answer needs."""
    api.answer = answer
    agent = agents("--api-timeout", "5")
    agent.following()
    pods = [f"p{i}" for i in range(5)]
    for pod in pods:
        agent.event(pod)
    wait_for(lambda: "rewarm_agent_events_posted_total 5.0" in agent.get("/metrics")[1])
    assert made_once(api, pods)
    assert agent.process.poll() is None and agent.ready()
    assert agent.hwm_mb() < AGENT_HWM_MB


def test_an_api_server_that_never_answers_makes_the_agent_unready_not_stuck_and_no_event_is_lost(agents, api):
    """It takes each request and never answers, the label's first: /metrics and /readyz answer
    from the start, /readyz 503 with the reason; the failures are counted. Once the API server
    answers again, the node is labelled, /readyz says ready and every Event is there, once (those
    it had made while silent are not made again)."""
    api.answer = "hang"
    agent = agents("--label", "--api-timeout", "1")
    agent.following()
    status, said = agent.get("/readyz")
    assert status == 503 and "not labelled" in said
    pods = [f"p{i}" for i in range(5)]
    for pod in pods:
        agent.event(pod)
    wait_for(lambda: "calls to the API server failed" in agent.get("/readyz")[1])
    assert agent.get("/readyz")[0] == 503
    scraped = agent.get("/metrics")[1]
    assert 'rewarm_agent_api_errors_total{call="event",reason="timeout"}' in scraped
    assert 'rewarm_agent_api_errors_total{call="label",reason="timeout"}' in scraped
    assert "rewarm_agent_ready 0.0" in scraped
    api.answer = "normal"
    wait_for(lambda: agent.ready() and "rewarm_agent_event_backlog 0.0" in agent.get("/metrics")[1])
    assert made_once(api, pods) and api.labels() == [{"rewarm.dev/runtime": "ready"}]
    assert agent.process.poll() is None


def test_an_api_server_that_fails_then_recovers_gets_each_event_once(agents, api):
    api.answer = "error"
    agent = agents("--api-timeout", "1")
    agent.following()
    pods = [f"p{i}" for i in range(4)]
    for pod in pods:
        agent.event(pod)
    wait_for(lambda: not agent.ready())
    assert 'rewarm_agent_api_errors_total{call="event",reason="http-500"}' in agent.get("/metrics")[1]
    assert api.posted == []
    api.answer = "normal"
    wait_for(lambda: agent.ready() and "rewarm_agent_event_backlog 0.0" in agent.get("/metrics")[1])
    assert made_once(api, pods)


def test_an_api_server_that_is_down_costs_a_try_not_the_agent():
    """Nothing listens: the failure is the call's, with its reason; the agent goes on."""
    from kubernetes import client

    from runtime.node import agent
    cfg = client.Configuration()
    cfg.host = f"http://127.0.0.1:{free_port()}"
    server = agent.ApiServer(client.ApiClient(cfg), timeout_s=2)
    e = agent.pod_event({"event": "restored", "namespace": "a", "pod": "p", "snapshot": "s", "seconds": 1.0})
    assert e is not None
    with pytest.raises(agent.ApiFailure) as failure:
        server.create_event(e, "n1")
    assert failure.value.reason == "unreachable" and failure.value.retry


def test_in_the_cluster_the_agent_reaches_the_api_server_over_tls_with_its_service_account(tmp_path, monkeypatch):
    """As the DaemonSet runs it: the ServiceAccount's token and CA, the API server's address from
    the environment, HTTPS; the certificate is checked and the token sent."""
    from runtime.lab.registry_lab import make_tls
    from runtime.node import agent
    (tmp_path / "tls").mkdir()
    ca, cert, key = make_tls(str(tmp_path / "tls"))
    account = tmp_path / "root" / agent.SERVICE_ACCOUNT
    account.mkdir(parents=True)
    shutil.copy(ca, account / "ca.crt")
    (account / "token").write_text("stand-in-token")
    api = StandInApiServer(tls=(cert, key))
    monkeypatch.setenv("KUBERNETES_SERVICE_HOST", "127.0.0.1")
    monkeypatch.setenv("KUBERNETES_SERVICE_PORT", str(api.port))
    try:
        server = agent.connect(None, str(tmp_path / "root"), timeout_s=5)
        e = agent.pod_event({"event": "captured", "namespace": "ns", "pod": "p", "snapshot": "s", "seconds": 1.0})
        assert e is not None
        server.create_event(e, "n1")
        server.label("n1", ready=True)
    finally:
        api.close()
    assert api.reasons("p") == ["Captured"] and api.labels() == [{"rewarm.dev/runtime": "ready"}]
    assert {c.lower() for c in api.credentials} == {"bearer stand-in-token"}


def test_the_agent_posts_each_event_once_while_the_log_rotates_at_its_bound(agents, api):
    """A small event_log_max_bytes: the log rotates every twenty events or so, with lines the agent
    has not read yet in the file that rotates; every event reaches the API server once."""
    agent = agents(event_log_max_bytes=4096)
    agent.following()
    pods: list[str] = []
    for i in range(60):   # 10 at a time, under 4096 bytes: no file is rotated away before the agent looks
        pods.append(f"r{i}")
        agent.event(pods[-1], reason="x" * 40)
        if i % 10 == 9:
            wait_for(lambda: len(api.posted) >= len(pods))
    assert os.path.exists(logs.previous(agent.event_log))
    assert made_once(api, pods) and api.by_method["POST"] == len(pods)


def test_the_agent_posts_each_event_once_through_copytruncate_and_torn_lines(agents, api):
    """logrotate's copytruncate with lines the agent has not read yet, then a writer that died
    mid-line leaving bytes that are not UTF-8: every complete event reaches the API server once."""
    agent = agents()
    agent.following()
    pods: list[str] = []
    for i in range(10):
        pods.append(f"c{i}")
        agent.event(pods[-1])
    shutil.copyfile(agent.event_log, logs.previous(agent.event_log))   # copytruncate
    os.truncate(agent.event_log, 0)
    for i in range(30):   # more than the log held before: the follower is not fooled by the size
        pods.append(f"t{i}")
        agent.event(pods[-1])
    with open(agent.event_log, "ab") as f:
        f.write(b'{"event": "restored", "namespace": "agent-a", "pod": "torn\xff\xfe')
    for i in range(10):
        pods.append(f"a{i}")
        agent.event(pods[-1])
    wait_for(lambda: len(api.posted) >= len(pods))
    pods.append("last")
    agent.event("last")   # posted after another look at the log or more: none before it came again
    wait_for(lambda: api.reasons("last"))
    assert made_once(api, pods) and api.by_method["POST"] == len(pods)
    assert agent.process.poll() is None


def test_a_scrape_at_100k_events_reads_what_is_new_not_the_whole_log(agents, api, tmp_path):
    """A log of 100k events (some 30 MB, as one from before the bound, or under a raised bound):
    the first scrape folds it into the running totals once; later scrapes, four at once too, read
    only what came since; the follower starts at its end; the agent's memory stays where it was."""
    big = tmp_path / "big" / "events.jsonl"
    big.parent.mkdir()
    with open(big, "wb") as f:
        for i in range(100_000):
            f.write(logs.encode({"time": "2026-12-06T01:56:34.563786745Z", "event": ("restored", "cold-start")[i % 2],
                                 "container": f"c{i:08d}", "namespace": "big", "pod": f"vllm-{i}", "snapshot": "llama",
                                 "seconds": 1.5, "reason": "snapshot big/llama does not fit this container: image",
                                 "stages": {"criu": 0.5, "cuda_restore": 0.3, "resume": 0.2}}))
    assert big.stat().st_size > 25e6
    agent = agents(event_log=str(big), event_log_max_bytes=64 << 20)
    agent.following()
    started = time.monotonic()
    assert 'rewarm_restores_total{namespace="big",snapshot="llama"} 50000.0' in agent.get("/metrics")[1]
    first = time.monotonic() - started
    agent.event("one-more")
    times: list[float] = []
    scraped: list[str] = []

    def scrape() -> None:
        t = time.monotonic()
        scraped.append(agent.get("/metrics")[1])
        times.append(time.monotonic() - t)
    scrapers = [threading.Thread(target=scrape) for _ in range(4)]
    for s in scrapers:
        s.start()
    for s in scrapers:
        s.join()
    assert all('rewarm_restores_total{namespace="agent-a",snapshot="llama"} 1.0' in s for s in scraped)
    assert first < 10 and max(times) < 0.2, (first, times)   # each took 1.0 s when it read the whole log
    assert agent.hwm_mb() < AGENT_HWM_MB                      # 228 MB for one scrape, 697 MB for four
    wait_for(lambda: api.reasons("one-more"))
    assert api.by_method["POST"] == 1                         # of the 100k old ones, none


def test_events_carry_the_pods_uid_and_are_warnings_only_where_something_broke(agents, api):
    """The first pod's cold start is what the situation calls for (Normal); a restore that broke, a
    refusal and every failure are Warnings; pulls and pushes have Events of their own; a pull that
    ended with its pod tells nobody."""
    agent = agents()
    agent.following()
    said = [("first", EventKind.COLD_START, {"code": "no_snapshot", "reason": "no snapshot agent-a/llama in the store yet"}),
            ("broke", EventKind.COLD_START, {"code": "restore_failed", "reason": "restore failed: CRIU said no"}),
            ("refused", EventKind.RESTORE_REFUSED, {"code": "not_fitting", "reason": "image differs"}),
            ("pulled", EventKind.PULLED, {"ref": "registry.example/llm:v1", "bytes": 2 << 30, "seconds": 3.5}),
            ("pull-failed", EventKind.PULL_FAILED, {"ref": "registry.example/llm:v1", "code": "registry_error",
                                                    "reason": "registry said 500"}),
            ("pull-gone", EventKind.PULL_FAILED, {"ref": "registry.example/llm:v1", "code": "pod_gone",
                                                  "reason": "its pod's container is gone"}),
            ("pushed", EventKind.PUSHED, {"ref": "registry.example/llm:v1", "digest": "sha256:ab", "bytes": 1 << 30,
                                          "skipped_bytes": 3 << 30}),
            ("push-failed", EventKind.PUSH_FAILED, {"ref": "registry.example/llm:v1", "code": "registry_error",
                                                    "reason": "unauthorized"}),
            ("skipped", EventKind.CAPTURE_SKIPPED, {"reason": "another capture of agent-a/llama is already running"}),
            ("not-woken", EventKind.HOOK_FAILED, {"reason": "resume hook POST /wake_up: 500"})]
    for pod, kind, fields in said:
        agent.event(pod, kind, **fields)
    agent.event("last", EventKind.CAPTURED)
    wait_for(lambda: api.reasons("last"))
    made = {data["involvedObject"]["name"]: data for _, data in api.posted}
    shown = {pod: (e["type"], e["reason"]) for pod, e in made.items()}
    assert shown == {"first": ("Normal", "ColdStart"), "broke": ("Warning", "ColdStart"),
                     "refused": ("Warning", "RestoreRefused"), "pulled": ("Normal", "SnapshotPulled"),
                     "pull-failed": ("Warning", "SnapshotPullFailed"), "pushed": ("Normal", "SnapshotPushed"),
                     "push-failed": ("Warning", "SnapshotPushFailed"), "skipped": ("Normal", "CaptureSkipped"),
                     "not-woken": ("Warning", "WorkerNotWoken"), "last": ("Normal", "Captured")}
    assert all(e["involvedObject"]["uid"] == f"uid-{pod}" for pod, e in made.items())
    assert made["pulled"]["message"] == "pulled snapshot llama from registry.example/llm:v1 in 3.5s (2.00 GiB)"
    assert made["pushed"]["message"] == ("pushed snapshot llama to registry.example/llm:v1 (sha256:ab) in 1.0s; "
                                         "1.00 GiB sent, 3.00 GiB there already")
    assert "unauthorized" in made["push-failed"]["message"] and "registry said 500" in made["pull-failed"]["message"]


def test_the_agent_keeps_a_gated_pod_out_while_rewarm_holds_it_and_lets_it_in_once_done(agents, api):
    """Pods the stand-in knows, with and without the readiness gate, and the records rewarm writes for
    them: a restore or a cold start without capture opens the gate at once; a cold start to be
    captured shuts it until the capture ends, and a worker that did not wake keeps it shut; a pod
    without the gate gets a Warning as its capture begins (a capture Job's pod does not); a pod of
    that name with another uid, or one the API server does not know, is left alone."""
    for name, gated in (("restored", True), ("cold", True), ("captured", True), ("unwoken", True),
                        ("failed", True), ("ungated", False), ("job", False)):
        api.add_pod("agent-a", name, f"uid-{name}", gated)
    api.add_pod("agent-a", "renamed", "uid-of-the-new-pod", True)
    agent = agents()
    agent.following()
    agent.event("restored")
    agent.event("cold", EventKind.COLD_START, code="no_snapshot", reason="no snapshot")
    for name in ("captured", "unwoken", "failed"):
        agent.event(name, EventKind.COLD_START, code="no_snapshot", reason="no snapshot", capture="on-ready")
        agent.event(name, EventKind.CAPTURING, capture="on-ready")
    agent.event("unwoken", EventKind.HOOK_FAILED, reason="resume hook POST /wake_up: 500")
    agent.event("unwoken", EventKind.CAPTURED)
    agent.event("captured", EventKind.CAPTURED)
    agent.event("failed", EventKind.CAPTURE_FAILED, code="capture_failed", reason="CRIU said no")
    agent.event("ungated", EventKind.CAPTURING, capture="on-ready")
    agent.event("job", EventKind.CAPTURING, capture="on-ready-then-exit")
    agent.event("renamed")                  # a record of the pod this name had before
    agent.event("unknown")                  # a pod the API server does not know (deleted)
    agent.event("last", EventKind.CAPTURED)
    wait_for(lambda: api.reasons("last"))   # the records are done with in order: every one before it is
    history = {name: [(c["status"], c["reason"]) for _, _, n, c in api.condition_log if n == name]
               for name in ("restored", "cold", "captured", "unwoken", "failed", "ungated", "job", "renamed")}
    assert history == {"restored": [("True", "Restored")], "cold": [("True", "NotCaptured")],
                       "captured": [("False", "CapturePending"), ("False", "Capturing"), ("True", "CaptureDone")],
                       "unwoken": [("False", "CapturePending"), ("False", "Capturing"), ("False", "WorkerNotWoken")],
                       "failed": [("False", "CapturePending"), ("False", "Capturing"), ("True", "CaptureDone")],
                       "ungated": [], "job": [], "renamed": []}
    assert "capture failed, the worker serves on" in api.condition("agent-a", "failed")["message"]
    for name in history:   # the transition time moves where the status does, and only there
        changes = [c for _, _, n, c in api.condition_log if n == name]
        moved = [i == 0 or c["status"] != changes[i - 1]["status"] for i, c in enumerate(changes)]
        assert moved == ["lastTransitionTime" in c for c in changes], changes
    (warning,) = [data for _, data in api.posted if data["reason"] == "CaptureWithoutReadinessGate"]
    assert warning["involvedObject"]["name"] == "ungated" and warning["involvedObject"]["uid"] == "uid-ungated"
    assert warning["type"] == "Warning" and "readinessGates: [{conditionType: rewarm.dev/ready}]" in warning["message"]
    assert agent.ready()
    assert 'rewarm_agent_gate_conditions_set_total{status="True"} 4.0' in agent.get("/metrics")[1]


def test_a_condition_is_set_only_on_the_pod_whose_uid_the_agent_read():
    """The uid rides in the status patch as a precondition: the API server refuses it (409) for a pod
    made again under the same name between the agent's read and its patch, and the agent takes that
    as "not this pod any more", neither a failure nor a retry."""
    from kubernetes import client

    from runtime.node import agent
    api = StandInApiServer()
    try:
        api.add_pod("ns", "p", "uid-now", gated=True)
        cfg = client.Configuration()
        cfg.host = api.url
        server = agent.ApiServer(client.ApiClient(cfg), timeout_s=5)
        pod = agent.PodRef("ns", "p")
        facts = server.pod(pod)
        assert facts == agent.PodFacts("uid-now", gated=True, ready=False, gate=None)
        done = agent.Verdict(True, "CaptureDone", "captured")
        assert not server.set_condition(pod, done, agent.PodFacts("uid-before", True, False, None))
        assert api.condition("ns", "p") is None
        assert server.set_condition(pod, done, facts)
        assert api.condition("ns", "p")["status"] == "True"
        assert server.pod(agent.PodRef("ns", "gone")) is None
    finally:
        api.close()


def test_an_agent_that_starts_again_lets_in_the_gated_pods_that_started_while_it_was_away(agents, api):
    """A DaemonSet rolling out restarts the agent: the records written meanwhile (of the last
    minutes) still set their pods' gates, a capture under way before the restart still holds its
    pod until it ends, and no Event of that time is posted again."""
    for name in ("while-away", "capturing", "long-ago"):
        api.add_pod("agent-a", name, f"uid-{name}", gated=True)
    agent = agents()
    agent.following()
    agent.stop()
    agent.event("while-away")                                            # restored while no agent ran
    agent.event("capturing", EventKind.COLD_START, code="no_snapshot", reason="no snapshot", capture="on-ready")
    agent.event("long-ago", time="2026-01-01T00:00:00.000000000Z")       # older than the catch-up
    agent.start()
    wait_for(lambda: "as their last records ask" in agent.said())
    wait_for(lambda: api.condition("agent-a", "capturing"))
    assert api.condition("agent-a", "while-away")["status"] == "True"
    assert api.condition("agent-a", "capturing")["reason"] == "CapturePending"
    assert api.condition("agent-a", "long-ago") is None and api.posted == []
    agent.event("capturing", EventKind.CAPTURED)
    wait_for(lambda: api.condition("agent-a", "capturing")["status"] == "True")
