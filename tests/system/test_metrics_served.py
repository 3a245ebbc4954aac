"""The two places rewarm's metrics are read, as a cluster reads them: `rewarm agent`'s /metrics
(what the PodMonitor scrapes) and the textfile `rewarm-hook poststop` writes (what a node
exporter reads), each a real process on one node's event log and store. Between any two reads
they serve the same samples, and no counter, bucket or sum goes down, whichever of them folded
the log last."""
from __future__ import annotations

import json
import os
import subprocess
import sys

from prometheus_client.parser import text_string_to_metric_families

from runtime.observe import logs
from runtime.snapshot import store
from runtime.model.events import EventKind
from runtime.model.fingerprint import Fingerprint
from runtime.model.manifest import FileDigest, Manifest
from test_agent import agents, api, wait_for   # noqa: F401  (the fixtures: the agent and its API server stand-in)

HOOK = os.path.join(os.path.dirname(sys.executable), "rewarm-hook")
Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]

ROUND = [
    (EventKind.RESTORED, {"seconds": 1.8, "stages": {"criu": 0.6, "cuda_restore": 0.5, "resume": 0.6}}),
    (EventKind.COLD_START, {"reason": "no snapshot agent-a/llama in the store yet", "code": "no_snapshot"}),
    (EventKind.COLD_START, {"reason": "runc restore failed (exit 1)", "code": "restore_failed"}),
    (EventKind.CAPTURED, {"seconds": 41.0, "bytes": 3 << 30, "stages": {"checkpoint": 30.2, "commit": 9.1}}),
    (EventKind.PULLED, {"seconds": 95.0, "bytes": 16 << 30}),
]


def rewarm_samples(text: str) -> Samples:
    """rewarm's own samples (the agent's rewarm_agent_* are its alone)."""
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples
            if not s.name.startswith("rewarm_agent_")}


def an_entry(root: str) -> store.Entry:
    st = store.Store(root).ensure()
    with st.staging() as staging:
        os.makedirs(os.path.join(staging, "checkpoint"))
        with open(os.path.join(staging, "checkpoint", "inventory.img"), "wb") as f:
            f.write(b"i" * 4096)
        fp = Fingerprint(image="img@sha256:1", args=("/w",), cwd="/", env={}, arch="x86_64", cpu="c", kernel="6",
                         criu="4", runtime="runc")
        return st.commit(staging, Manifest(namespace="agent-a", name="llama", created="2026-12-01T00:00:00Z",
                                           fingerprint=fp, fingerprint_id=fp.ident(), source={"container_id": "c"},
                                           files={"checkpoint/inventory.img": FileDigest(4096, "")}))


def test_the_agents_metrics_and_the_textfile_agree_and_only_grow(agents, tmp_path):
    agent = agents(store=str(tmp_path / "store"), event_log_max_bytes=4096)   # a rotation every few rounds
    agent.following()
    an_entry(str(tmp_path / "store"))
    with open(agent.config) as f:
        textfile = json.load(f)["metrics_file"]
    env = {**os.environ, "REWARM_CONFIG": agent.config, "REWARM_RUNTIME_ROOT": str(tmp_path / "run")}
    last: Samples = {}
    for round_ in range(6):
        for i, (kind, fields) in enumerate(ROUND):
            agent.event(f"p{round_}-{i}", kind, **fields)
        state = {"ociVersion": "1.0.2", "id": f"c-p{round_}-0", "annotations": {"rewarm.dev/snapshot": "llama",
                                                                                "io.kubernetes.pod.namespace": "agent-a"}}
        stopped = subprocess.run([HOOK, "poststop"], input=json.dumps(state), env=env, capture_output=True,
                                 text=True, timeout=60)
        assert stopped.returncode == 0, stopped.stderr
        with open(textfile) as f:
            written = rewarm_samples(f.read())
        scraped = rewarm_samples(agent.get("/metrics")[1])   # after the hook: the agent folds nothing new
        free = ("rewarm_store_free_bytes", ())                # the disk's, read at each: it moves meanwhile
        assert scraped.pop(free) > 0 and written.pop(free) > 0
        assert scraped == written
        assert all(scraped[key] >= last.get(key, 0) for key in scraped) and set(last) <= set(scraped)
        last = scraped
    assert os.path.exists(logs.previous(agent.event_log))
    snap = (("namespace", "agent-a"), ("snapshot", "llama"))
    assert last[("rewarm_restores_total", snap)] == 6
    assert last[("rewarm_restore_seconds_bucket", (("le", "2.0"), *snap))] == 6
    assert last[("rewarm_restore_failures_total", (("code", "restore_failed"), *snap))] == 6
    assert last[("rewarm_cold_starts_total", (("code", "no_snapshot"), *snap))] == 6
    assert last[("rewarm_restore_stage_seconds_count", (("stage", "criu"),))] == 6
    assert last[("rewarm_pull_bytes_total", snap)] == 6 * (16 << 30)
    assert last[("rewarm_containers_stopped_total", (("outcome", "restored"),))] == 6
    assert last[("rewarm_store_entries", ())] == 1 and last[("rewarm_store_used_bytes", ())] == 4096
    assert [key for key in last if key[0] == "rewarm_build_info"]
