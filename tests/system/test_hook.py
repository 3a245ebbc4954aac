"""rewarm-hook: injected by rewarm-runc into annotated containers, run by runc (also during a restore).
prestart makes the addresses of a snapshot's sockets exist where runc makes the network namespace; poststop
cleans up and records the outcome as an event and as Prometheus metrics. Bad input fails clearly."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

from helpers import events, run_measured
from oci_hooks.main import RUNTIME_ROOT_ENV
from runtime.engine import capture
from runtime.host.files import write_json
from runtime.model import layout

HOOK = os.path.join(os.path.dirname(sys.executable), "rewarm-hook")
BOUND = "10.99.0.2"   # an address of the source pod that the restoring pod does not have


def run_hook(stage: str, stdin: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([HOOK, stage], input=stdin, capture_output=True, text=True, env={**os.environ, **(env or {})})


def test_bad_state_on_stdin_gives_a_clear_error_and_exit_code():
    out = run_hook("prestart", "not json")
    assert out.returncode != 0 and "rewarm-hook prestart: the OCI state on stdin is not JSON" in out.stderr
    out = run_hook("prestart", json.dumps({"pid": 1}))
    assert out.returncode != 0 and "lacks 'ociVersion' or 'id'" in out.stderr


def test_prestart_run_by_hooks_d_rejects_a_bad_or_missing_annotation_value():
    """CRI-O's or Podman's hooks.d (no rewarm-runc: no runtime root in the hook's environment)."""
    state = {"ociVersion": "1.0.2", "id": "c1", "annotations": {"rewarm.dev/snapshot": "ok", "rewarm.dev/fallback": "maybe"}}
    out = run_hook("prestart", json.dumps(state))
    assert out.returncode != 0 and "invalid rewarm.dev/fallback: 'maybe'" in out.stderr
    state["annotations"] = {"rewarm.dev/capture": "on-ready"}
    out = run_hook("prestart", json.dumps(state))
    assert out.returncode != 0 and "rewarm.dev/snapshot is required" in out.stderr
    state["annotations"] = {"rewarm.dev/snapshot": "ok"}
    assert run_hook("prestart", json.dumps(state)).returncode == 0


def test_hooks_do_nothing_for_unannotated_containers():
    assert run_hook("poststop", json.dumps({"ociVersion": "1.0.2", "id": "c1"})).returncode == 0
    assert run_hook("bogus", "{}").returncode != 0


def test_rewarm_runc_adds_its_hooks_after_the_containers_own_and_poststop_reports(lab, node):
    own = {"path": "/bin/true", "args": ["true", "own-hook"]}
    worker = lab.worker({"rewarm.dev/snapshot": "hooked"})
    worker.hooks = {"poststop": [own]}
    c = lab.create("hooked", worker)
    c.wait_ready()
    spec = json.load(open(os.path.join(c.bundle.path, "config.json")))
    assert [h["args"] for h in spec["hooks"]["poststop"]] == [["true", "own-hook"], ["rewarm-hook", "poststop"]]
    assert "prestart" not in spec["hooks"]          # a named netns: the restore prepares it, no hook process
    plain = lab.create("plain", lab.worker())
    assert "hooks" not in json.load(open(os.path.join(plain.bundle.path, "config.json")))
    c.destroy()   # runc delete --force: the poststop hooks run
    stopped = [e for e in events(node, "stopped") if e["container"] == c.cid]
    assert stopped and stopped[0]["outcome"] == "cold" and stopped[0]["snapshot"] == "hooked"
    assert "no snapshot default/hooked" in stopped[0]["reason"] and stopped[0]["lifetime_seconds"] > 1
    metrics = open(node.metrics_file).read()
    assert '# TYPE rewarm_cold_starts_total counter' in metrics
    assert 'rewarm_containers_stopped_total{outcome="cold"}' in metrics


def worker_bound_to(lab, name: str, snapshot: str):  # type: ignore[no-untyped-def]
    """A worker that listens on BOUND only, an address its network namespace has on loopback."""
    c = lab.create(name, lab.worker({"rewarm.dev/snapshot": snapshot}, env={"HOST": BOUND}), start=False)
    subprocess.run(["nsenter", f"--net=/var/run/netns/{c.netns}", "ip", "addr", "add", f"{BOUND}/32", "dev", "lo"],
                   check=True)
    c.runtime_cmd("start", c.cid, check=True)
    return c


def test_a_restore_makes_the_snapshots_bound_address_exist_in_the_pods_netns_first(lab, node):
    """The source listened on an address the restoring pod's namespace lacks: rewarm-runc adds it
    (and brings loopback up) before CRIU binds the socket again, without a hook process."""
    source = worker_bound_to(lab, "bound-src", "bound")
    answer, _ = source.wait_ready(host=BOUND)
    entry = capture.capture(node, lab.runc_root, source.cid, "bound", leave_running=True)
    assert entry.manifest.bound_addresses == (BOUND,)
    c = lab.create("bound-restored", lab.worker({"rewarm.dev/snapshot": "bound"}, env={"HOST": BOUND}))
    assert c.get(host=BOUND)["boot_id"] == answer["boot_id"], c.runtime_log()
    restored = [e for e in events(node, "restored") if e["container"] == c.cid]
    assert restored and restored[0]["addresses_added"] == [BOUND] and "network" in restored[0]["stages"]


def test_prestart_adds_the_bound_addresses_where_runc_makes_the_namespace(tmp_path):
    """The hook's half (a spec without a named netns: runc makes it): as the restore told it in its
    work dir, it brings loopback up and adds the snapshot's addresses in the restoring process's netns."""
    root = str(tmp_path / "runc-root")
    work = layout.work_dir(root, "h1")
    os.makedirs(work)
    write_json(os.path.join(work, layout.PRESTART), {"namespace": "default", "snapshot": "b", "bound_addresses": [BOUND]})
    netns = f"hook-{os.getpid()}"
    subprocess.run(["ip", "netns", "add", netns], check=True)
    inside = subprocess.Popen(["ip", "netns", "exec", netns, "sleep", "600"])
    try:
        state = {"ociVersion": "1.0.2", "id": "h1", "pid": inside.pid, "bundle": str(tmp_path),
                 "annotations": {"rewarm.dev/snapshot": "b"}}
        out = run_hook("prestart", json.dumps(state), env={RUNTIME_ROOT_ENV: root})
        assert out.returncode == 0, out.stderr
        shown = subprocess.run(["ip", "-n", netns, "addr", "show", "lo"], capture_output=True, text=True).stdout
        assert f"inet {BOUND}/32" in shown and "UP" in shown, shown
        cold = run_hook("prestart", json.dumps({**state, "id": "h2"}), env={RUNTIME_ROOT_ENV: root})
        assert cold.returncode == 0, cold.stderr   # nothing told: a cold start, nothing to do
    finally:
        inside.kill()
        inside.wait()
        subprocess.run(["ip", "netns", "del", netns], check=False)
        shutil.rmtree(work, ignore_errors=True)


def test_poststop_at_100k_events_reads_its_containers_start_and_whats_new_not_the_whole_log(tmp_path):
    """A log of 100k events (24 MB) with the container's start in the middle: poststop finds
    it reading backwards, records the stop and writes the metrics with every event counted. The
    first stop folds the log into the metrics' running totals once; every later stop costs what is
    new, in time and memory (each measured on its own process)."""
    from runtime.observe import logs
    from runtime.lab.private_node import write_config
    config = write_config(str(tmp_path))
    with open(config) as f:
        cfg = json.load(f)
    with open(cfg["event_log"], "wb") as f:
        for i in range(100_000):
            record = {"time": "2026-12-06T01:56:34.563786745Z", "event": ("restored", "cold-start")[i % 2],
                      "container": f"c{i:08d}", "namespace": "big", "snapshot": "llama", "seconds": 1.5,
                      "reason": "snapshot big/llama does not fit this container: image", "stages": {"criu": 0.5}}
            if i == 50_000:
                record = {"time": "2026-12-06T01:56:34.563786745Z", "event": "cold-start", "container": "stopping",
                          "namespace": "big", "snapshot": "llama", "seconds": 0.25, "reason": "no snapshot big/llama"}
            f.write(logs.encode(record))
    assert os.path.getsize(cfg["event_log"]) > 20e6

    def poststop(cid: str) -> tuple[float, float]:
        """Seconds and the most resident memory (MB) of one `rewarm-hook poststop`."""
        state = {"ociVersion": "1.0.2", "id": cid,
                 "annotations": {"rewarm.dev/snapshot": "llama", "io.kubernetes.pod.namespace": "big"}}
        done, peak, seconds = run_measured([HOOK, "poststop"], stdin=json.dumps(state).encode(),
                                           env={**os.environ, "REWARM_CONFIG": config,
                                                "REWARM_RUNTIME_ROOT": str(tmp_path / "run")})
        assert done.returncode == 0, done.stderr
        return seconds, peak / 2**20

    first = poststop("stopping")
    later = [poststop(f"later-{i}") for i in range(3)]
    stopped = [e for e in logs.read_events(cfg["event_log"]) if e["event"] == "stopped"]
    assert stopped[0]["container"] == "stopping" and stopped[0]["outcome"] == "cold"
    assert stopped[0]["reason"] == "no snapshot big/llama" and stopped[0]["start_seconds"] == 0.25
    with open(cfg["metrics_file"]) as f:
        text = f.read()
    assert 'rewarm_restores_total{namespace="big",snapshot="llama"} 49999.0' in text
    assert 'rewarm_containers_stopped_total{outcome="unknown"} 3.0' in text
    assert first[0] < 10 and max(t for t, _ in later) < 0.6, (first, later)
    assert max(mb for _, mb in [first, *later]) < 80, (first, later)   # it read the whole log into 181 MB
