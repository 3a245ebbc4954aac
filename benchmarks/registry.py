"""Snapshots through a registry: push and pull throughput of a ~1 GB snapshot against a loopback
registry (Debian's docker-registry in a container, plain HTTP), beside a yardstick of the same run:
a plain parallel download of the same blobs (threads + http.client, written into files at their
offsets, nothing verified), and the same with sha256 verification. Then, through containerd's CRI,
the CPU worker's pull-then-restore (a pod whose node lacks the snapshot, rewarm.dev/snapshot-ref)
against a local restore and a `rewarm pull` alone. Rounds alternate so drift hits all alike.
Usage: .venv/bin/python benchmarks/registry.py [--gib 1] [--rounds 3] [--pods 3] [--no-pods]
"""
from __future__ import annotations

import argparse
import hashlib
import http.client
import os
import shutil
import socket
import statistics
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import common
from runtime.host import settings_file
from runtime.snapshot import store
from runtime.host.files import write_json
from runtime.registry import native
from runtime.engine import pull, push
from runtime.engine.fingerprinting import of_container
from runtime.engine.formats import Caller
from runtime.lab.registry_lab import Registry
from runtime.model import layout
from runtime.model.manifest import Manifest

THREADS = 8
IMAGE = "localhost/rewarm/bench-worker:registry"
COMMAND = ["/usr/bin/python3", "/app/worker.py"]
ENV = {"WARM_SECONDS": "2", "PORT": "8080", "BALLAST_MB": "64"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def make_entry(settings, gib: float) -> store.Entry:
    st = store.Store(settings.store).ensure()
    with st.staging() as staging:
        os.makedirs(os.path.join(staging, "checkpoint"))
        with open(os.path.join(staging, "checkpoint", "inventory.img"), "wb") as f:
            f.write(b"inventory")
        with open(os.path.join(staging, "checkpoint", "pages-1.img"), "wb") as f:
            for _ in range(int(gib * 16)):
                f.write(os.urandom(64 << 20))
        spec = {"process": {"args": ["/worker"], "env": [], "cwd": "/"}}
        write_json(os.path.join(staging, layout.SPEC_DUMP), spec)
        write_json(os.path.join(staging, layout.DELETED_FILES), [])
        import tarfile
        with tarfile.open(os.path.join(staging, layout.ROOTFS_DIFF), "w"):
            pass
        fp = of_container(spec, settings)
        return st.commit(staging, Manifest(namespace="default", name="bench", created="2026-11-29T00:00:00Z",
                                           fingerprint=fp, fingerprint_id=fp.ident(), source={"container_id": "b"}))


def yardstick(address: str, repo: str, layers: list[dict], out_dir: str, verify: bool) -> float:
    """Seconds to download every blob with THREADS threads into files at their offsets."""
    local = threading.local()
    shutil.rmtree(out_dir, ignore_errors=True)
    os.makedirs(out_dir)
    fds: dict[str, int] = {}
    for layer in layers:
        path = layer["annotations"][native.PATH_KEY]
        if path not in fds:
            fds[path] = os.open(os.path.join(out_dir, path.replace("/", "_")), os.O_RDWR | os.O_CREAT, 0o600)

    def get(layer: dict) -> None:
        conn = getattr(local, "conn", None) or http.client.HTTPConnection(address, timeout=60)
        local.conn = conn
        conn.request("GET", f"/v2/{repo}/blobs/{layer['digest']}")
        r = conn.getresponse()
        fd, offset, h = fds[layer["annotations"][native.PATH_KEY]], int(layer["annotations"][native.OFFSET_KEY]), hashlib.sha256()
        buf = getattr(local, "buf", None) or memoryview(bytearray(1 << 20))
        local.buf = buf
        while n := r.readinto(buf):
            if verify:
                h.update(buf[:n])
            os.pwrite(fd, buf[:n], offset)
            offset += n
        assert not verify or "sha256:" + h.hexdigest() == layer["digest"]
    started = time.monotonic()
    with ThreadPoolExecutor(THREADS) as pool:
        list(pool.map(get, sorted(layers, key=lambda l: -l["size"])))
    seconds = time.monotonic() - started
    for fd in fds.values():
        os.close(fd)
    shutil.rmtree(out_dir, ignore_errors=True)
    return seconds


def throughput(settings, registry: Registry, gib: float, rounds: int, top: str) -> dict:
    entry = make_entry(settings, gib)
    ref = f"{registry.address}/bench/snapshot:v1"
    os.sync()
    pushed = push.push(settings, "bench", ref, caller=Caller(quiet=True))
    again = push.push(settings, "bench", ref, caller=Caller(quiet=True))
    client = pull.client_for(settings, pull.registry_ref.parse(ref))
    _, manifest = client.get_manifest()
    layers = manifest["layers"]
    size = entry.size()
    samples: dict[str, list[float]] = {"rewarm pull": [], "yardstick": [], "yardstick + sha256": []}
    st = store.Store(settings.store)
    for i in range(rounds):
        order = ["rewarm pull", "yardstick", "yardstick + sha256"]
        for what in order[i % 3:] + order[:i % 3]:
            os.sync()
            if what == "rewarm pull":
                st.remove("default", "copy")
                done = pull.pull(settings, ref, "copy", caller=Caller(quiet=True))
                samples[what].append(done.progress.seconds())
            else:
                samples[what].append(yardstick(registry.address, "bench/snapshot", layers, os.path.join(top, "yard"),
                                               verify=what != "yardstick"))
    st.remove("default", "copy")
    med = {k: statistics.median(v) for k, v in samples.items()}
    return {"bytes": size, "push_s": pushed.progress.seconds(), "push_again_s": again.progress.seconds(),
            "samples_s": samples, "median_s": med,
            "pull_vs_yardstick": med["yardstick"] / med["rewarm pull"],
            "pull_vs_verified_yardstick": med["yardstick + sha256"] / med["rewarm pull"]}


def pods(settings_path: str, registry: Registry, n: int) -> dict:
    from runtime.observe import logs
    from runtime.lab.containerd_lab import Lab
    from runtime.lab.runc_lab import WORKER_DIR, rewarm_runc
    settings = settings_file.load(settings_path)
    ref = f"{registry.address}/bench/worker:v1"
    lab = Lab("bench-registry", rewarm_config=settings_path).setup(rewarm_runc())
    st = store.Store(settings.store)
    notes = {"rewarm.dev/snapshot": "worker", "rewarm.dev/snapshot-ref": ref}
    out: dict[str, list[float]] = {"local restore": [], "rewarm pull": [], "pull-then-restore": []}
    try:
        lab.build_worker_image(IMAGE, WORKER_DIR, [])
        source = lab.pod("source", IMAGE, COMMAND, env=ENV, annotations={
            **notes, "rewarm.dev/capture": "on-ready", "rewarm.dev/push": "on-capture"})
        source.wait_answer()
        deadline = time.monotonic() + 180
        while not [e for e in logs.read_events(settings.event_log) if e["event"] in ("pushed", "push-failed") and e.get("snapshot") == "worker"]:
            assert time.monotonic() < deadline, "no push"
            time.sleep(0.2)
        entry_bytes = st.entries("default", "worker")[0].size()

        def pod_seconds(name: str) -> float:
            pod = lab.pod(name, IMAGE, COMMAND, env=ENV, annotations=notes)
            try:
                _, seconds = pod.wait_answer(timeout=120)
                assert [e for e in logs.read_events(settings.event_log)
                        if e["event"] == "restored" and e["container"] == pod.container_id], "not restored"
            finally:
                pod.delete()
            return seconds
        pod_seconds("warm-up")
        for i in range(n):
            out["local restore"].append(pod_seconds(f"local-{i}"))
            st.remove("default", "probe")
            os.sync()
            t = time.monotonic()   # the whole pull, as the pulled pod pays it: manifest and config too
            pull.pull(settings, ref, "probe", caller=Caller(quiet=True))
            out["rewarm pull"].append(time.monotonic() - t)
            st.remove("default", "worker")
            os.sync()
            out["pull-then-restore"].append(pod_seconds(f"pulled-{i}"))
        source.delete()
    finally:
        lab.destroy()
    med = {k: statistics.median(v) for k, v in out.items()}
    return {"snapshot_bytes": entry_bytes, "samples_s": out, "median_s": med,
            "budget_s": med["rewarm pull"] + 1.2 * med["local restore"],
            "within_budget": med["pull-then-restore"] <= med["rewarm pull"] + 1.2 * med["local restore"]}


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--gib", type=float, default=1.0)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--pods", type=int, default=3)
    p.add_argument("--no-pods", action="store_true")
    a = p.parse_args()
    registry_dir = os.path.join("/var/tmp", f"rewarm-bench-registry-{os.getpid()}")
    registry = Registry(registry_dir, free_port(), tls=False, auth=False).start()
    try:
        top, _ = common.private_node(plain_http_registries=[registry.address], allowed_registries=[registry.address],
                                     transfer_threads=THREADS)
        settings = settings_file.load(os.path.join(top, "config.json"))
        result = {"machine": common.machine(), "threads": THREADS, "piece_bytes": native.CHUNK_BYTES,
                  "throughput": throughput(settings, registry, a.gib, a.rounds, top)}
        if not a.no_pods:
            result["pods"] = pods(os.path.join(top, "config.json"), registry, a.pods)
    finally:
        registry.stop()
        shutil.rmtree(registry_dir, ignore_errors=True)
    t = result["throughput"]
    gb = t["bytes"] / 1e9
    rows = [["rewarm push (first)", f"{t['push_s']:.2f}", f"{gb / t['push_s']:.2f}", ""],
            ["rewarm push (again: every blob there)", f"{t['push_again_s']:.2f}", "", ""]]
    for k, v in t["median_s"].items():
        rows.append([k, f"{v:.2f}", f"{gb / v:.2f}", f"{t['median_s']['yardstick'] / v:.2f}"])
    markdown = (f"Snapshot of {gb:.2f} GB, {native.CHUNK_BYTES >> 20} MiB pieces, {THREADS} threads, loopback "
                f"registry, median of {a.rounds} rounds\n\n"
                + common.table(["transfer", "seconds", "GB/s", "vs yardstick"], rows))
    if "pods" in result:
        pm = result["pods"]["median_s"]
        markdown += ("\n\nCPU worker through CRI (snapshot "
                     f"{result['pods']['snapshot_bytes'] / 1e6:.1f} MB), pod start to first answer, median\n\n"
                     + common.table(["path", "seconds"], [[k, f"{v:.2f}"] for k, v in pm.items()]
                                    + [["budget: pull + 1.2 x local restore", f"{result['pods']['budget_s']:.2f}"],
                                       ["within budget", str(result["pods"]["within_budget"])]]))
    common.write("registry", result, markdown)


if __name__ == "__main__":
    main()
