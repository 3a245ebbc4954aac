"""Restore of shared anonymous memory (MAP_SHARED | MAP_ANONYMOUS, as the CUDA checkpoint leaves a
GPU worker's pinned host buffers: vLLM's sleep-level-1 weight backup) through rewarm-runc, with one
reader (CRIU's own fill) and with --readers, in one run: the runtime's restore time, and whether
the restored memory is byte-exact (sha256 of the whole area, taken in the restored process).

Usage: python3 benchmarks/shmem_restore.py [--gib 2] [--readers 2] [--repeats 2]
Writes benchmarks/results/shmem_restore[_LABEL].{json,md}.
"""
from __future__ import annotations

import argparse
import os
import statistics
import tempfile

import common
from runtime.host import settings_file
from runtime.observe import logs
from runtime.engine import capture
from runtime.front.names import CONFIG_ENV
from runtime.lab.private_node import write_config
from runtime.lab.runc_lab import Lab

WORKER = '''
import hashlib, http.server, mmap, os
size = int(os.environ["GIB"]) << 30
m = mmap.mmap(-1, size, flags=mmap.MAP_SHARED | mmap.MAP_ANONYMOUS)
block = os.urandom(64 << 20)
for off in range(0, size, 64 << 20):   # every 64 MiB differs: a restore that mixes pieces up shows
    m[off:off + len(block)] = block
    block = hashlib.sha512(block[:64]).digest() + block[64:]
class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        body = ('"%s"' % hashlib.sha256(m).hexdigest()).encode()
        self.send_response(200); self.send_header("Content-Length", str(len(body))); self.end_headers()
        self.wfile.write(body)
http.server.HTTPServer(("0.0.0.0", 8080), Handler).serve_forever()
'''


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--gib", type=int, default=2)
    p.add_argument("--readers", type=int, default=2)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--label", default="")
    a = p.parse_args()
    top = tempfile.mkdtemp(prefix="rewarm-shmem-")
    os.chmod(top, 0o755)
    app = os.path.join(top, "app")
    os.makedirs(app)
    with open(os.path.join(app, "worker.py"), "w") as f:
        f.write(WORKER)
    snapshot = {"rewarm.dev/snapshot": "shmem"}
    runs: dict[int, list[float]] = {}
    digest, same = None, True
    for readers in (1, a.readers):
        config = write_config(top, restore_threads=readers)
        os.environ[CONFIG_ENV] = config
        node = settings_file.load(config)
        lab = Lab(os.path.join(top, f"lab-{readers}"))
        worker = lambda: lab.worker(snapshot, env={"GIB": str(a.gib)}, args=["/usr/bin/python3", "/app/worker.py"],
                                    app_dir=app)
        try:
            if digest is None:
                source = lab.create("source", worker())
                digest, _ = source.wait_ready(timeout=600)
                capture.capture(node, lab.runc_root, source.cid, "shmem", leave_running=False)
                lab.containers.remove(source)
                source.bundle.remove()
            for i in range(a.repeats):
                c = lab.create(f"restore-{i}", worker())
                answer, _ = c.wait_ready(timeout=600)
                same = same and answer == digest
                event = [e for e in logs.read_events(node.event_log)
                         if e.get("container") == c.cid and e["event"] == "restored"][-1]
                runs.setdefault(readers, []).append(event["stages"]["runtime_restore"])
                c.destroy()
                lab.containers.remove(c)
        finally:
            lab.close()
    rows = [[r, ", ".join(f"{s:.2f}" for s in t), f"{statistics.median(t):.2f}",
             f"{a.gib * 2**30 / statistics.median(t) / 1e9:.2f}"] for r, t in runs.items()]
    m = common.machine()
    text = (f"{a.gib} GiB of MAP_SHARED anonymous memory restored through rewarm-runc, {m['cores']} cores, "
            f"{m['date']}; byte-exact in every restore: {same}.\n\n"
            + common.table(["readers", "runtime restore (s)", "median (s)", "GB/s (whole restore)"], rows))
    common.write("shmem_restore" + (f"_{a.label}" if a.label else ""), {"machine": m, "gib": a.gib, "runs": runs,
                                                                        "byte_exact": same}, text)
    if not same:
        raise SystemExit("a restore did not give the captured memory back")


if __name__ == "__main__":
    main()
