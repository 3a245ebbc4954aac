"""Memory restore throughput of rewarm's CRIU by readers (restore_threads 1, 2, 4, 8, 16), THP
`madvise` and `always`, page cache warm and dropped, beside the machine's limits measured in the
same run: a plain C fill (benchmarks/fill_yardstick.c: N threads pread the snapshot's page image
into anonymous memory) and the disk's read bandwidth.

The worker (benchmarks/workers/ballast.py) holds --gib GiB in a runc container with its own PID
namespace; it is captured once and restored once per configuration through rewarm-runc. CRIU's
memory stage is read from its restore log (`pfill: task 1: filled ...`, one reader: the CRIU stage).
Usage: python3 benchmarks/memory_restore.py [--gib 4] [--readers 1,2,4,8,16] [--repeat 1]
Writes benchmarks/results/memory_restore[_LABEL].{json,md}; benchmarks/chart.py draws it.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import tempfile
import time

import common
from runtime.host import settings_file
from runtime.observe import logs
from runtime.engine import capture
from runtime.engine.restore import RESTORE_LOG_COPY
from runtime.front.names import CONFIG_ENV
from runtime.lab.runc_lab import Lab

HERE = os.path.dirname(os.path.abspath(__file__))
FILL = re.compile(r"pfill: task 1: filled (\d+) bytes, (\d+) readers, ([\d.]+) s")
SNAPSHOT = {"rewarm.dev/snapshot": "ballast"}


def build_yardstick(work: str) -> str:
    binary = os.path.join(work, "fill-yardstick")
    subprocess.run(["cc", "-O2", "-pthread", "-o", binary, os.path.join(HERE, "fill_yardstick.c")], check=True)
    return binary


def yardstick(binary: str, image: str, readers: list[int]) -> dict[str, dict[int, float]]:
    """GB/s of the C fill from the page image (warm) by threads, with default advice and with huge pages."""
    subprocess.run(["cat", image], stdout=subprocess.DEVNULL, check=True)
    out = subprocess.run([binary, "-t", ",".join(map(str, readers)), "-m", "default,thp", "-r", "2", image],
                         capture_output=True, text=True, check=True).stdout
    found: dict[str, dict[int, float]] = {"default": {}, "thp": {}}
    for line in out.splitlines():
        m = re.search(r"threads=(\d+) mode=(\w+) .*best_s=[\d.]+ GB/s=([\d.]+)", line)
        if m:
            found[m.group(2)][int(m.group(1))] = float(m.group(3))
    return found


def disk_read_gbps(path: str) -> float:
    common.drop_page_cache()
    t, n = time.monotonic(), 0
    with open(path, "rb", buffering=0) as f:
        while chunk := f.read(16 << 20):
            n += len(chunk)
    return n / (time.monotonic() - t) / 1e9


def restore_once(lab: Lab, top: str, base: dict, gib: float, readers: int, name: str) -> dict:
    config = os.path.join(top, f"config-{readers}.json")
    with open(config, "w") as f:
        json.dump({**base, "restore_threads": readers}, f)
    os.environ[CONFIG_ENV], kept = config, os.environ[CONFIG_ENV]
    try:
        c = lab.create(name, lab.worker(SNAPSHOT, args=["/usr/bin/python3", "/app/ballast.py"],
                                        app_dir=os.path.join(HERE, "workers"), env={"GIB": str(gib)}))
    finally:
        os.environ[CONFIG_ENV] = kept
    events = [e for e in logs.read_events(base["event_log"]) if e.get("container") == c.cid]
    restored = [e for e in events if e["event"] == "restored"]
    if not restored or c.get(timeout=30) is None:
        raise RuntimeError(f"{name} was not restored: {events}")
    with open(os.path.join(lab.runc_root, c.cid, RESTORE_LOG_COPY), errors="replace") as f:
        fill = FILL.search(f.read())
    c.destroy()
    lab.containers.remove(c)
    stages = restored[-1]["stages"]
    out = {"readers": readers, "criu_s": stages.get("runtime_restore"), "stages": stages}
    if fill:
        out.update(fill_bytes=int(fill.group(1)), fill_readers=int(fill.group(2)), fill_s=float(fill.group(3)))
    return out


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--gib", type=float, default=4)
    p.add_argument("--readers", default="1,2,4,8,16")
    p.add_argument("--thp", default="madvise,always")
    p.add_argument("--cache", default="warm,dropped")
    p.add_argument("--label", default="")
    a = p.parse_args()
    readers = [int(r) for r in a.readers.split(",")]
    top, _ = common.private_node()
    base = settings_file.load().to_json()
    lab = Lab(os.path.join(top, "lab"))
    original = common.thp()
    work = tempfile.mkdtemp(prefix="rewarm-fill-")
    try:
        src = lab.create("ballast", lab.worker(SNAPSHOT, args=["/usr/bin/python3", "/app/ballast.py"],
                                               app_dir=os.path.join(HERE, "workers"), env={"GIB": str(a.gib)}))
        src.wait_ready(timeout=600)
        entry = capture.capture(settings_file.load(), lab.runc_root, src.cid, "ballast", leave_running=False)
        lab.containers.remove(src)
        src.bundle.remove()
        pages = max((entry.file(f) for f in entry.manifest.files if "pages-" in f), key=os.path.getsize)
        size = entry.manifest.capture.checkpoint_bytes
        ys = yardstick(build_yardstick(work), pages, readers)
        disk = disk_read_gbps(pages)
        runs = []
        for mode in a.thp.split(","):
            common.thp(mode)
            for cache in a.cache.split(","):
                for r in readers:
                    common.pretouch(size / 2**30 * 1.5 + 1)   # see common.pretouch
                    if cache == "dropped":
                        common.drop_page_cache()
                    else:
                        subprocess.run(["cat", pages], stdout=subprocess.DEVNULL, check=True)
                    run = restore_once(lab, top, base, a.gib, r, f"r{r}-{mode}-{cache}")
                    run.update(thp=mode, cache=cache)
                    runs.append(run)
                    print(f"THP {mode}, cache {cache}, {r} readers: CRIU {run['criu_s']:.2f}s, "
                          f"fill {run.get('fill_s', 0):.2f}s", flush=True)
    finally:
        common.thp(original)
        lab.close()
        shutil.rmtree(work, ignore_errors=True)
    rows = []
    for run in runs:
        seconds = run.get("fill_s") or run["criu_s"]
        gbps = (run.get("fill_bytes") or size) / seconds / 1e9
        limit = ys["thp" if run["readers"] > 1 else "default"].get(run["readers"], 0)
        rows.append([run["thp"], run["cache"], run["readers"], f"{run['criu_s']:.2f}",
                     f"{run['fill_s']:.2f}" if "fill_s" in run else "(in CRIU)", f"{gbps:.2f}",
                     f"{limit:.2f}" if run["cache"] == "warm" else f"{disk:.2f} (disk)",
                     f"{gbps / (limit if run['cache'] == 'warm' else disk):.0%}" if limit or disk else ""])
    md = (f"Memory restore of a {size / 1e9:.2f} GB worker (one process, its own PID namespace) through "
          f"rewarm-runc, {common.machine()['cores']} cores, {common.machine()['date']}. Fill = CRIU's memory "
          "stage from its log (with 1 reader, CRIU's own code: its whole stage). Yardstick: the C fill from "
          "the same page image in the page cache (huge pages for N > 1, no advice for 1), and the disk "
          f"read of it: {disk:.2f} GB/s.\n\n"
          + common.table(["THP", "page cache", "readers", "CRIU stage (s)", "fill (s)", "fill GB/s",
                          "yardstick GB/s", "of yardstick"], rows))
    name = "memory_restore" + (f"_{a.label}" if a.label else "")
    common.write(name, {"machine": common.machine(), "snapshot_bytes": size, "yardstick": ys,
                        "disk_read_gbps": disk, "runs": runs}, md)


if __name__ == "__main__":
    main()
