"""vLLM's own weight loaders, side by side: how fast each brings a model's safetensors from the page
cache (warm, and dropped) into GPU tensors, the way `reload_weights` does after a sleep level 2
restore. No server: each loader's weight iterator (vLLM 0.24.0's `weight_utils`) is run over the
model's files, and every tensor is copied into a GPU tensor allocated beforehand, as a model's
`load_weights` copies into its parameters.

  default         safetensors_weights_iterator (`--load-format auto`, vLLM's default)
  multithread     multi_thread_safetensors_weights_iterator
                  (`--model-loader-extra-config '{"enable_multithread_load": true, "num_threads": N}'`)
  fastsafetensors `--load-format fastsafetensors` (fastsafetensors, no GPUDirect Storage here)
  instanttensor   `--load-format instanttensor`, once per INSTANTTENSOR_BACKEND of --backends (its
                  default is Direct I/O, which never reads from the page cache; a container of
                  rewarm's has no io_uring, so its URING backends fall back)

The disk's and the page cache's read bandwidth of the same run stand beside them (the largest file).
Usage (on the GPU node, vLLM and the loaders importable):
  python3 benchmarks/weight_loaders.py --model /opt/vmodel-8b --label h200
Writes benchmarks/results/weight_loaders[_LABEL].{json,md}.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from typing import Callable, Iterator

import common

Loader = Callable[[list[str]], Iterator]


def loaders(threads: int, backends: list[str]) -> dict[str, tuple[list[str], dict[str, str], Loader]]:
    """name -> (the vLLM flags and the environment that choose it, its iterator over the files)."""
    from vllm.model_executor.model_loader import weight_utils as w

    def instanttensor(backend: str) -> Loader:
        def run(files: list[str]) -> Iterator:
            os.environ["INSTANTTENSOR_BACKEND"] = backend   # read at each safe_open
            return w.instanttensor_weights_iterator(files, False)
        return run
    return {
        "default": ([], {}, lambda f: w.safetensors_weights_iterator(f, False)),
        "multithread": ([f'--model-loader-extra-config={{"enable_multithread_load":true,"num_threads":{threads}}}'], {},
                        lambda f: w.multi_thread_safetensors_weights_iterator(f, False, max_workers=threads)),
        "fastsafetensors": (["--load-format=fastsafetensors"], {},
                            lambda f: w.fastsafetensors_weights_iterator(f, False)),
        **{f"instanttensor-{b.lower().replace('_', '-')}": (["--load-format=instanttensor"],
                                                            {"INSTANTTENSOR_BACKEND": b}, instanttensor(b))
           for b in backends},
    }


def load_once(iterator: Iterator, targets: dict) -> tuple[float, int]:
    import torch
    t, n = time.monotonic(), 0
    for name, tensor in iterator:
        targets[name].copy_(tensor)
        n += tensor.numel() * tensor.element_size()
    torch.cuda.synchronize()
    return time.monotonic() - t, n


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--model", required=True)
    p.add_argument("--threads", type=int, default=os.cpu_count() or 8, help="the multithread loader's num_threads")
    p.add_argument("--only", default="", help="comma-separated loaders (default: all)")
    p.add_argument("--caches", default="warm,dropped")
    p.add_argument("--backends", default="MMAP,AIO_BUFFERED,AIO", help="instanttensor's backends to try")
    p.add_argument("--label", default="")
    a = p.parse_args()
    import torch
    from safetensors import safe_open
    files = sorted(os.path.join(a.model, f) for f in os.listdir(a.model) if f.endswith(".safetensors"))
    total = sum(os.path.getsize(f) for f in files)
    targets = {}
    for path in files:   # the parameters a model would copy into
        with safe_open(path, framework="pt") as f:
            for name in f.keys():   # noqa: SIM118 (safe_open has no __iter__)
                s = f.get_slice(name)
                targets[name] = torch.empty(s.get_shape(), dtype=getattr(torch, _dtype(s.get_dtype())), device="cuda")
    largest = max(files, key=os.path.getsize)
    common.drop_page_cache()
    disk = common.read_gbps(largest)
    page_cache = common.read_gbps(largest)
    rows, runs = [], []
    chosen = loaders(a.threads, a.backends.split(","))
    for name in [n for n in chosen if not a.only or n.split("-")[0] in a.only.split(",")]:
        args, env, make = chosen[name]
        flags = " ".join([*args, *(f"{k}={v}" for k, v in env.items())]) or "(vLLM's default)"
        for cache in a.caches.split(","):
            if cache == "dropped":
                common.drop_page_cache()
            else:
                for path in files:
                    common.read_gbps(path)
            try:
                seconds, n = load_once(make(files), targets)
            except Exception as e:   # a loader missing on this node is a row that says so
                print(f"{name}, page cache {cache}: failed: {type(e).__name__}: {e}", file=sys.stderr, flush=True)
                rows.append([name, cache, "-", "-", f"failed: {type(e).__name__}: {str(e)[:80]}", flags])
                continue
            runs.append({"loader": name, "page_cache": cache, "seconds": seconds, "bytes": n, "vllm_args": args,
                         "env": env})
            rows.append([name, cache, f"{seconds:.2f}", f"{n / seconds / 1e9:.1f}", "", flags])
            print(f"{name}, page cache {cache}: {n / 1e9:.2f} GB in {seconds:.2f}s ({n / seconds / 1e9:.1f} GB/s)",
                  flush=True)
    gpu = torch.cuda.get_device_name(0)
    md = "\n".join([
        f"vLLM 0.24.0's weight loaders, {total / 1e9:.1f} GB of safetensors ({len(files)} files) into GPU tensors, "
        f"on {gpu}, {os.cpu_count()} cores, {time.strftime('%Y-%m-%d')}.",
        f"Disk read {disk:.2f} GB/s, page-cache read {page_cache:.2f} GB/s (one reader, {os.path.basename(largest)}).",
        "", common.table(["loader", "page cache", "seconds", "GB/s", "note", "vLLM flags"], rows)])
    common.write("weight_loaders" + (f"_{a.label}" if a.label else ""),
                 {"gpu": gpu, "machine": common.machine(), "model_bytes": total, "disk_read_gbps": disk,
                  "page_cache_read_gbps": page_cache, "runs": runs}, md)


def _dtype(name: str) -> str:
    return {"BF16": "bfloat16", "F16": "float16", "F32": "float32", "I64": "int64", "I32": "int32",
            "U8": "uint8", "I8": "int8", "BOOL": "bool", "F64": "float64"}[name]


if __name__ == "__main__":
    main()
