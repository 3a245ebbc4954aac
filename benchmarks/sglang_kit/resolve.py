#!/usr/bin/env python3
"""Walk SGLang's Requires-Dist for an offline GPU node and download what the node lacks.

pip's resolver cannot do this dry run (torch 2.11's nvidia-nccl-cu13 pin is not on PyPI, numba
pins numpy<2.5), so this walks the tree itself: markers are evaluated for cp312 / Linux / x86_64
with the extras asked for; a requirement the node already meets is left to the node and not
descended into (a node package is carried when its known version misses the pin); a requirement in
DROP is neither carried nor descended into; everything else is downloaded as a wheel with
`pip download --no-deps --only-binary=:all:` for cp312 manylinux_2_5..2_39 and walked in turn.

Usage: python3 benchmarks/sglang_kit/resolve.py [--out .sgkit] [--node-packages benchmarks/sglang_kit/node-packages.txt]
Writes OUT/whl/*.whl (kept wheels only; a wheel already there that meets the specs is reused) and
OUT/resolved.json: carried / node / dropped, each with the specs asked, who asked, and why.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import zipfile
from email.parser import Parser
from pathlib import Path

try:
    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name, parse_wheel_filename
except ImportError:  # pip always vendors it
    from pip._vendor.packaging.requirements import Requirement
    from pip._vendor.packaging.utils import canonicalize_name, parse_wheel_filename

ROOTS = ["sglang==0.5.17"]

# The node: cp312 on Linux x86_64 (glibc new enough for manylinux_2_39).
MARKER_ENV = {
    "python_version": "3.12", "python_full_version": "3.12.3", "implementation_version": "3.12.3",
    "implementation_name": "cpython", "platform_python_implementation": "CPython",
    "os_name": "posix", "sys_platform": "linux", "platform_system": "Linux",
    "platform_machine": "x86_64", "platform_release": "", "platform_version": "",
}
PLATFORMS = ["manylinux1_x86_64", "manylinux2010_x86_64", "manylinux2014_x86_64"] + [
    f"manylinux_2_{n}_x86_64" for n in range(5, 40)]

# Versions known on the node; its other packages (node-packages.txt) have unknown versions and are
# assumed to meet the specs (resolved.json lists each spec so the node can check them).
NODE_VERSIONS = {
    "torch": "2.11.0", "torchvision": "0.26.0", "torchaudio": "2.11.0", "transformers": "5.17.0",
    "tokenizers": "0.23.2", "safetensors": "0.8.0", "huggingface-hub": "1.33.0",
    "numpy": "2.5.2", "triton": "3.6.0",
}

# Left to the node even where a spec excludes its version: shadowing these would change what the
# node's torch stack imports underneath it.
KEEP_NODE = {
    "numpy": "mistral-common pins numpy<2.4; the node's 2.5.2 stays (torch, scipy, numba are built "
             "against it) and the pin is recorded as ignored",
}

# Not carried, not descended into (so their own needs - nvcc/cccl wheels, flashinfer-cubin,
# flashinfer-jit-cache, TVM, ... - are not reached either): never imported when
# `python3 -m sglang.launch_server` starts a bf16 Llama with --attention-backend triton
# --sampling-backend pytorch on sm90. imports.py checks that no hard import reaches one of them.
_CUTE = "CuTe-DSL kernels (Blackwell attention/MoE/GEMM), imported lazily by the backends that use them"
DROP = {
    "flash-attn-4": "FlashAttention 4: " + _CUTE,
    "nvidia-cutlass-dsl": "CUTLASS Python DSL with its native libs: " + _CUTE,
    "quack-kernels": _CUTE,
    "cuda-tile": "cuTile DSL for some flashinfer kernels, imported in try/except",
    "nvidia-mathdx": "cuBLASDx/cuFFTDx for JIT kernels of other backends",
    "humming-kernels": "quantized-GEMM kernels (the model is bf16)",
    "helion": "Helion kernel DSL, optional kernels imported lazily",
    "tilelang": "TileLang compiler (with its own TVM): DeepSeek sparse-attention kernels",
    "tokenspeed-mla": "MLA decode kernels (DeepSeek-style models)",
    "torchcodec": "video decoding for multimodal inputs (needs FFmpeg libs)",
    "nccl4py": "flashinfer's NCCL bindings for its all-reduce (tp=1)",
    "nvidia-cudnn-frontend": "flashinfer's cuDNN path, imported in try/except",
    "nvidia-cuda-nvcc": "nvcc wheel: the node has its CUDA 13 toolkit",
    "flashinfer-cubin": "flashinfer's prebuilt cubins: the triton backend does not use them",
    "flashinfer-jit-cache": "flashinfer's prebuilt JIT cache: nvcc on the node can JIT",
    "kernels": "Hugging Face kernel-hub client, used only for hub kernels",
    "modelscope": "ModelScope hub client, only with SGLANG_USE_MODELSCOPE=1",
    "py-spy": "sampling-profiler binary, run only for hang dumps",
    "smg-grpc-servicer": "gRPC server mode (--smg-grpc-mode), not the HTTP server",
    "anthropic": "Anthropic backend of the sglang.lang frontend, not the server",
}

PIP_DOWNLOAD = [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:",
                "--python-version", "3.12", "--implementation", "cp"] + [
    a for p in PLATFORMS for a in ("--platform", p)]


def wanted(req: Requirement, extras: set[str]) -> bool:
    if req.marker is None:
        return True
    return any(req.marker.evaluate({**MARKER_ENV, "extra": e}) for e in (extras or {""}))


def wheel_requires(path: Path) -> list[str]:
    with zipfile.ZipFile(path) as z:
        meta = next(n for n in z.namelist() if n.endswith(".dist-info/METADATA") and n.count("/") == 1)
        msg = Parser().parsestr(z.read(meta).decode())
    return msg.get_all("Requires-Dist") or []


def local_wheels(whl: Path) -> dict[str, list]:
    out = {}
    for p in sorted(whl.glob("*.whl")):
        name, version, _, _ = parse_wheel_filename(p.name)
        out.setdefault(canonicalize_name(name), []).append((version, p))
    return out


def fetch(req: Requirement, whl: Path, have: dict) -> Path:
    """The wheel for req: one already in whl/ that meets it, else the newest pip finds."""
    name = canonicalize_name(req.name)
    for version, path in sorted(have.get(name, []), reverse=True):
        if req.specifier.contains(version, prereleases=True):
            return path
    with tempfile.TemporaryDirectory(dir=whl) as tmp:
        spec = f"{req.name}{req.specifier}"
        r = subprocess.run(PIP_DOWNLOAD + ["-d", tmp, spec], capture_output=True, text=True)
        got = list(Path(tmp).glob("*.whl"))
        if r.returncode or len(got) != 1:
            raise SystemExit(f"pip download {spec} failed:\n{r.stdout}{r.stderr}")
        dest = whl / got[0].name
        got[0].replace(dest)
    version = parse_wheel_filename(dest.name)[1]
    have.setdefault(name, []).append((version, dest))
    print(f"  downloaded {dest.name} ({dest.stat().st_size / 2**20:.1f} MiB)", flush=True)
    return dest


NODE_PACKAGES = Path(__file__).with_name("node-packages.txt")


def listed(path: Path) -> list[str]:
    """The distribution names of a list file (one a line, # comments)."""
    return [l.split("#", 1)[0].strip() for l in path.read_text().splitlines() if l.split("#", 1)[0].strip()]


def node_packages(path: Path) -> dict[str, str | None]:
    node = {canonicalize_name(n): None for n in listed(path)}
    node.update({canonicalize_name(k): v for k, v in NODE_VERSIONS.items()})
    return node


def walk(out: Path, node: dict) -> dict:
    whl = out / "whl"
    whl.mkdir(parents=True, exist_ok=True)
    have = local_wheels(whl)
    carried, left, dropped = {}, {}, {}
    queue = [(Requirement(r), "(root)") for r in ROOTS]
    done: set[tuple[str, frozenset]] = set()  # (name, extras) already walked
    while queue:
        req, parent = queue.pop(0)
        name = canonicalize_name(req.name)
        ask = {"spec": str(req.specifier) or "*", "by": parent}
        if name in DROP:
            dropped.setdefault(name, {"reason": DROP[name], "asked": []})["asked"].append(ask)
            continue
        known = node.get(name, "absent")
        fits = known is None or (known != "absent" and req.specifier.contains(known, prereleases=True))
        if name not in carried and (fits or name in KEEP_NODE):
            e = left.setdefault(name, {"version": known or "unknown (assumed to meet the specs)", "asked": []})
            e["asked"].append(ask)
            if not fits:
                e.setdefault("pin_ignored", []).append(ask)
                e["why"] = KEEP_NODE[name]
            continue
        if name in carried:
            e = carried[name]
            e["asked"].append(ask)
            if not req.specifier.contains(e["version"], prereleases=True):
                e.setdefault("conflicts", []).append(ask)
        else:
            path = fetch(req, whl, have)
            why = (f"node has {known}, pin wants {req.specifier}" if known != "absent"
                   else "not on the node")
            carried[name] = {"version": str(parse_wheel_filename(path.name)[1]), "wheel": path.name,
                             "size": path.stat().st_size, "why": why, "asked": [ask]}
        key = (name, frozenset(req.extras))
        if key in done:
            continue
        done.add(key)
        me = f"{name}{'[' + ','.join(sorted(req.extras)) + ']' if req.extras else ''}"
        for line in wheel_requires(whl / carried[name]["wheel"]):
            dep = Requirement(line)
            if wanted(dep, set(req.extras)):
                queue.append((dep, me))
    return {"roots": ROOTS, "target": MARKER_ENV, "platforms": f"{PLATFORMS[0]} .. {PLATFORMS[-1]}",
            "carried": dict(sorted(carried.items())), "node": dict(sorted(left.items())),
            "dropped": dict(sorted(dropped.items()))}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=".sgkit")
    ap.add_argument("--node-packages", default=str(NODE_PACKAGES), help="what the node's image brings")
    a = ap.parse_args()
    out = Path(a.out)
    res = walk(out, node_packages(Path(a.node_packages)))
    keep = {c["wheel"] for c in res["carried"].values()}
    for p in (out / "whl").glob("*.whl"):  # a wheel left from an earlier walk
        if p.name not in keep:
            p.unlink()
    (out / "resolved.json").write_text(json.dumps(res, indent=1) + "\n")
    size = sum(c["size"] for c in res["carried"].values())
    print(f"carried {len(res['carried'])} wheels ({size / 2**20:.0f} MiB), left to the node "
          f"{len(res['node'])}, dropped {len(res['dropped'])}")
    bad = {n: c["conflicts"] for n, c in res["carried"].items() if c.get("conflicts")}
    if bad:
        raise SystemExit(f"version conflicts: {bad}")


if __name__ == "__main__":
    main()
