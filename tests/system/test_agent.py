"""`rewarm agent` turns the event log into Kubernetes Events on the pods and serves /metrics.
A Kubernetes API server cannot run here: a stand-in at the agent's seam (the API's HTTP route for
core/v1 Events, answering as the API server does) records what the real kubernetes client posts."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
import urllib.request

import pytest

from api_server_stand_in import StandInApiServer
from registry_fixtures import free_port
from runtime.adapters import logs
from runtime.model.events import EventKind


@pytest.fixture
def api():
    server = StandInApiServer()
    yield server
    server.server.shutdown()


def wait_for(predicate, timeout: float = 20.0):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.1)


def test_the_agent_posts_restores_cold_starts_and_captures_as_events_on_their_pods(node, api, tmp_path):
    port = free_port()
    agent = subprocess.Popen([os.path.join(os.path.dirname(sys.executable), "rewarm"), "agent", "--node", "gpu-1",
                              "--kubeconfig", api.kubeconfig(str(tmp_path / "kubeconfig")),
                              "--metrics-port", str(port), "--label"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert agent.stdout is not None and "labelled rewarm.dev/runtime=ready" in agent.stdout.readline()
        assert api.patched == [("/api/v1/nodes/gpu-1", {"metadata": {"labels": {"rewarm.dev/runtime": "ready"}}})]
        assert "rewarm agent:" in agent.stdout.readline()   # following the log now
        logs.event(node.event_log, EventKind.RESTORED, container="c1", namespace="agent-a", pod="vllm-0",
                   snapshot="llama", seconds=2.61, stages={"criu": 1.2, "cuda_restore": 0.9, "resume": 0.4})
        logs.event(node.event_log, EventKind.COLD_START, container="c2", namespace="agent-a", pod="vllm-1",
                   snapshot="llama", seconds=0.1, reason="snapshot agent-a/llama does not fit this container: image")
        logs.event(node.event_log, EventKind.CAPTURED, container="c3", namespace="agent-b", pod="sg-0",
                   snapshot="sg", seconds=12.5, bytes=3 << 30)
        logs.event(node.event_log, EventKind.WARMED, namespace="agent-a", snapshot="llama")   # not a pod's news
        wait_for(lambda: len(api.posted) >= 3)
        time.sleep(0.5)
        by_reason = {body["reason"]: (path, body) for path, body in api.posted}
        assert set(by_reason) == {"Restored", "ColdStart", "Captured"}
        path, restored = by_reason["Restored"]
        assert path == "/api/v1/namespaces/agent-a/events" and restored["type"] == "Normal"
        assert restored["involvedObject"] == {"kind": "Pod", "apiVersion": "v1", "name": "vllm-0",
                                              "namespace": "agent-a"}
        assert "restored from snapshot llama in 2.61s (criu 1.20s" in restored["message"]
        assert restored["source"] == {"component": "rewarm", "host": "gpu-1"}
        _, cold = by_reason["ColdStart"]
        assert cold["type"] == "Warning" and "does not fit this container: image" in cold["message"]
        assert "3.00 GiB" in by_reason["Captured"][1]["message"]
        scraped = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
        assert 'rewarm_restores_total{namespace="agent-a",snapshot="llama"} 1.0' in scraped
        assert 'rewarm_cold_starts_total{namespace="agent-a",reason="incompatible",snapshot="llama"} 1.0' in scraped
    finally:
        agent.kill()
        agent.wait()


def test_an_api_server_that_refuses_costs_the_event_not_the_agent(node, tmp_path):
    """Down or refusing: the agent says so on stderr and goes on with the next record."""
    from runtime.node import agent
    from kubernetes import client
    cfg = client.Configuration()
    cfg.host = f"http://127.0.0.1:{free_port()}"   # nothing listens there
    cfg.retries = 0
    api = client.CoreV1Api(client.ApiClient(cfg))
    records = [{"event": "restored", "namespace": "a", "pod": "p", "snapshot": "s", "seconds": 1.0}]
    assert agent.post(api, records, "n1") == 0
