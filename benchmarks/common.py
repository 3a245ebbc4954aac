"""Shared bits of the benchmark scripts: a private rewarm config, tables, result files."""
from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")


def private_node(**overrides: object) -> tuple[str, dict]:
    """A temp dir with its own rewarm config (store, event log), based on the one $REWARM_CONFIG
    names (e.g. the runtime and CRIU paths of a GPU host) and exported through REWARM_CONFIG."""
    from runtime.front.names import CONFIG_ENV
    from runtime.lab.private_node import write_config
    top = tempfile.mkdtemp(prefix="rewarm-bench-")
    os.chmod(top, 0o755)
    path = write_config(top, **overrides)
    os.environ[CONFIG_ENV] = path
    with open(path) as f:
        return top, json.load(f)


def machine() -> dict:
    def first(cmd: list[str]) -> str:
        try:
            return subprocess.run(cmd, capture_output=True, text=True).stdout.strip().splitlines()[0]
        except (OSError, IndexError):
            return "?"
    cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "?")
    return {"date": time.strftime("%Y-%m-%d"), "kernel": platform.release(), "cpu": cpu, "cores": os.cpu_count(),
            "runc": first(["runc", "--version"]), "criu": first(["criu", "--version"]),
            "python": platform.python_version()}


def table(headers: list[str], rows: list[list]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    return "\n".join(lines)


def write(name: str, data: dict, markdown: str) -> None:
    os.makedirs(RESULTS, exist_ok=True)
    with open(os.path.join(RESULTS, f"{name}.json"), "w") as f:
        json.dump(data, f, indent=2)
    with open(os.path.join(RESULTS, f"{name}.md"), "w") as f:
        f.write(markdown + "\n")
    print(markdown)


def pretouch(gib: float, threads: int | None = None) -> float:
    """Touch and free this much anonymous memory; returns the seconds it took. A VM that backs its
    memory lazily (Firecracker here) pays the host's page faults the first time memory unused so far
    is touched, which a bare-metal node does not; a restore measured after this pays only its own."""
    import ctypes
    import mmap
    from concurrent.futures import ThreadPoolExecutor
    size, chunk = int(gib * (1 << 30)), 256 << 20
    t = time.monotonic()
    m = mmap.mmap(-1, size, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    m.madvise(mmap.MADV_HUGEPAGE)   # freed as whole huge pages: no fragmentation left for the restore
    base = ctypes.addressof(ctypes.c_char.from_buffer(m))
    with ThreadPoolExecutor(threads or os.cpu_count() or 1) as pool:   # memset runs without the GIL
        list(pool.map(lambda off: ctypes.memset(base + off, 1, min(chunk, size - off)), range(0, size, chunk)))
    del base
    m.close()
    return time.monotonic() - t


THP = "/sys/kernel/mm/transparent_hugepage/enabled"


def thp(mode: str | None = None) -> str | None:
    try:
        if mode:
            with open(THP, "w") as f:
                f.write(mode)
        return open(THP).read().split("[")[1].split("]")[0]
    except OSError:
        return None


def drop_page_cache() -> None:
    subprocess.run(["sync"], check=True)
    with open("/proc/sys/vm/drop_caches", "w") as f:
        f.write("3\n")


def read_gbps(path: str) -> float:
    t, n = time.monotonic(), 0
    with open(path, "rb", buffering=0) as f:
        while chunk := f.read(16 << 20):
            n += len(chunk)
    return n / (time.monotonic() - t) / 1e9
