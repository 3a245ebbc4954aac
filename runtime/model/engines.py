"""Engine presets (`rewarm.dev/engine`): the hooks a stock serving engine already offers, read off
its command line, so that a pod opts in with one annotation and no worker code of ours.

vLLM (`--enable-sleep-mode`, VLLM_SERVER_DEV_MODE=1 for its dev endpoints):
  sleep level 1  quiesce POST /sleep?level=1 (weights to host memory, KV cache freed: the weights
                 travel in the snapshot); resume POST /wake_up
  sleep level 2  quiesce POST /sleep?level=2 (weights and KV cache freed); resume /wake_up?tags=weights,
                 /collective_rpc {"method": "reload_weights"} (read from the model files again, by
                 the loader of the server's --load-format), /wake_up?tags=kv_cache; the model's files
                 are what the worker reads back
  weights-resident  quiesce /sleep?level=2, /wake_up?tags=weights, /collective_rpc reload_weights:
                 the weights are back on the GPU and only the KV cache is freed, so they travel in the
                 snapshot as GPU memory; resume /wake_up?tags=kv_cache. Nothing is read back.
  ready          GET /health
SGLang (`--enable-memory-saver`): quiesce /release_memory_occupation, resume
/resume_memory_occupation, ready /health (its model files are read back).

The port and host come from `--port` / `--host` (vLLM 8000, SGLang 30000), the model from `--model`
/ `--model-path` or `vllm serve MODEL`: a path in the container, or a Hugging Face name found under
$HF_HOME (default /root/.cache/huggingface) in the container's environment.
"""
from __future__ import annotations

import ipaddress
import posixpath
import re
from dataclasses import dataclass
from enum import Enum
from typing import Sequence

from runtime.model.errors import InvalidInput, shown
from runtime.model.hooks import HookCall

VLLM, SGLANG = "vllm", "sglang"
ENGINES = (VLLM, SGLANG)


class SleepLevel(Enum):
    """What vLLM gives back before a capture (`rewarm.dev/sleep-level`)."""
    WEIGHTS_TO_HOST = "1"           # vLLM's level 1: the weights to pinned host memory
    WEIGHTS_DROPPED = "2"           # vLLM's level 2: the weights read again from the model files
    WEIGHTS_RESIDENT = "weights-resident"   # level 2, then the weights woken and reloaded before the capture


# Level 2 by measurement (stock vLLM 0.24.0, 8B, H200): a 4.4 GB snapshot instead of 21.3 GB, first token
# 5.9 s instead of 12.2 s from a warm page cache and 18.9 s instead of 24.9 s from a cold one
# (benchmarks/results/vllm_8b_h200.md). Level 1 suits a node without the model files.
DEFAULT_SLEEP_LEVEL = SleepLevel.WEIGHTS_DROPPED
VLLM_NEEDS = "vLLM answers it when started with --enable-sleep-mode and VLLM_SERVER_DEV_MODE=1"
SGLANG_NEEDS = "SGLang answers it when started with --enable-memory-saver"


@dataclass(frozen=True)
class Preset:
    quiesce: tuple[HookCall, ...]
    resume: tuple[HookCall, ...]
    ready_http: str
    reads_back: tuple[str, ...] = ()   # container paths (files or directories) the worker reads again on resume
    advice: str = ""                   # what would make this engine's restore faster (its events and doctor say it)


# vLLM's loaders reloading 14.5 GB of weights from the page cache onto an H200 (benchmarks/results/
# weight_loaders_h200.md), and what that made of a level-2 restore to the first token (vllm_8b_*_h200.md).
FAST_LOADER = ("--load-format instanttensor with INSTANTTENSOR_BACKEND=MMAP (pip install instanttensor) reloads "
               "from the page cache at 42.6 GB/s against 7.9 GB/s for the default loader: an 8B restore to its "
               "first token took 2.47 s instead of 4.35 s on an H200")
DIRECT_IO_BACKENDS = ("", "AIO", "URING", "CUFILE")   # InstantTensor's defaults read around the page cache


def flag(args: Sequence[str], *names: str) -> str | None:
    """The value of the last `--name VALUE` or `--name=VALUE` among args."""
    found = None
    for i, arg in enumerate(args):
        for name in names:
            if arg == name and i + 1 < len(args):
                found = args[i + 1]
            elif arg.startswith(name + "="):
                found = arg[len(name) + 1:]
    return found


def model_dir(model: str | None, env: Sequence[str]) -> str | None:
    """Where a model named on the command line lies in the container: a path as it is, a Hugging Face
    name (org/name) under the hub cache's snapshots."""
    if not model:
        return None
    if model.startswith("/"):
        return posixpath.normpath(model)
    if model.count("/") != 1 or ".." in model:
        return None
    values = dict(e.split("=", 1) for e in env if "=" in e)
    hub = values.get("HF_HUB_CACHE") or posixpath.join(values.get("HF_HOME", "/root/.cache/huggingface"), "hub")
    return posixpath.join(hub, "models--" + model.replace("/", "--"), "snapshots")


HOSTNAME_RE = re.compile(r"[A-Za-z0-9]([A-Za-z0-9.-]{0,251}[A-Za-z0-9])?")


def _base(args: Sequence[str], default_port: int) -> str:
    """Where the engine listens, as a URL's start: --port is ASCII digits (int() would take '８０００'),
    --host an IP address (bracketed or not) or a host name; an unspecified address is reached on loopback."""
    port = flag(args, "--port") or str(default_port)
    if not (port.isascii() and port.isdigit()) or not 0 < int(port) < 65536:
        raise InvalidInput(f"the engine's --port {shown(port, 20)} is not a port")
    host = flag(args, "--host") or "127.0.0.1"
    try:
        address = ipaddress.ip_address(host[1:-1] if host.startswith("[") and host.endswith("]") else host)
    except ValueError:
        if not HOSTNAME_RE.fullmatch(host):
            raise InvalidInput(f"the engine's --host {shown(host, 40)} is not a host name or an IP address") from None
        return f"http://{host}:{port}"
    if address.is_unspecified:
        return f"http://127.0.0.1:{port}"
    return f"http://{'[' + str(address) + ']' if address.version == 6 else address}:{port}"


def needs(engine: str, args: Sequence[str], env: Sequence[str], flag_name: str, env_name: str | None) -> None:
    """Refuse a preset whose engine cannot answer it, naming what it lacks (a `--config` file may
    hold the flag: then the engine's answer tells)."""
    on = any(a == flag_name or a.startswith(flag_name + "=") and a.split("=", 1)[1].lower() in ("1", "true")
             for a in args)
    if not on and "--config" not in " ".join(args):
        raise InvalidInput(f"rewarm.dev/engine: {engine} needs {flag_name} on the engine's command line "
                           "(its sleep and wake hooks)")
    if env_name and f"{env_name}=1" not in env:
        raise InvalidInput(f"rewarm.dev/engine: {engine} needs {env_name}=1 in the container's environment "
                           "(the engine's /sleep and /wake_up endpoints)")


def _vllm(args: Sequence[str], env: Sequence[str], level: SleepLevel) -> Preset:
    needs(VLLM, args, env, "--enable-sleep-mode", "VLLM_SERVER_DEV_MODE")
    base = _base(args, 8000)

    def call(path: str, body: bytes = b"{}") -> HookCall:
        return HookCall(base + path, body=body, hint=VLLM_NEEDS)
    if level is SleepLevel.WEIGHTS_TO_HOST:
        return Preset((call("/sleep?level=1"),), (call("/wake_up"),), f"{base}/health")
    weights_back = (call("/wake_up?tags=weights"), call("/collective_rpc", b'{"method": "reload_weights"}'))
    kv_back = call("/wake_up?tags=kv_cache")
    if level is SleepLevel.WEIGHTS_RESIDENT:
        return Preset((call("/sleep?level=2"), *weights_back), (kv_back,), f"{base}/health")
    model = flag(args, "--model")
    if model is None and "serve" in args[:3]:   # `vllm serve MODEL ...`
        rest = list(args[args.index("serve") + 1:])
        model = rest[0] if rest and not rest[0].startswith("-") else None
    found = model_dir(model, env)
    return Preset((call("/sleep?level=2"),), (*weights_back, kv_back), f"{base}/health", (found,) if found else (),
                  _loader_advice(args, env))


def _loader_advice(args: Sequence[str], env: Sequence[str]) -> str:
    """At level 2 vLLM reloads its weights with the loader of its --load-format: say so where a
    faster one of vLLM's own would shorten every restore (rewarm does not change the command line)."""
    load_format = (flag(args, "--load-format") or "auto").lower()
    if load_format == "instanttensor":
        backend = dict(e.split("=", 1) for e in env if "=" in e).get("INSTANTTENSOR_BACKEND", "").upper()
        if backend.split(",")[0] in DIRECT_IO_BACKENDS:
            return ("InstantTensor reads with Direct I/O unless INSTANTTENSOR_BACKEND says otherwise: a restore's "
                    "reload then ignores the page cache rewarm warms (2.0 GB/s against 42.6 GB/s with "
                    "INSTANTTENSOR_BACKEND=MMAP on an H200)")
        return ""
    if load_format in ("auto", "safetensors"):
        return f"vLLM reloads its weights after each restore with its default loader; {FAST_LOADER}"
    return ""


def _sglang(args: Sequence[str], env: Sequence[str]) -> Preset:
    needs(SGLANG, args, env, "--enable-memory-saver", None)
    base = _base(args, 30000)
    found = model_dir(flag(args, "--model-path", "--model"), env)
    return Preset((HookCall(f"{base}/release_memory_occupation", hint=SGLANG_NEEDS),),
                  (HookCall(f"{base}/resume_memory_occupation", hint=SGLANG_NEEDS),),
                  f"{base}/health", (found,) if found else ())


def preset(engine: str, args: Sequence[str], env: Sequence[str],
           sleep_level: SleepLevel = DEFAULT_SLEEP_LEVEL) -> Preset:
    if engine == VLLM:
        return _vllm(args, env, sleep_level)
    if engine == SGLANG:
        return _sglang(args, env)
    raise InvalidInput(f"unknown engine {engine[:40]!r} (known: {', '.join(ENGINES)})")
