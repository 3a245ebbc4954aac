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
SGLang (`--enable-memory-saver`): quiesce /release_memory_occupation (weights, KV cache and CUDA
graph memory given back through torch_memory_saver); resume /resume_memory_occupation, then
/update_weights_from_disk {"model_path": MODEL}, since the weights' memory comes back without its
content (its model files are read back); with `--enable-weights-cpu-backup` the weights wait in host
memory instead (they travel in the snapshot) and /resume_memory_occupation alone brings them back.
ready /health.

The port and host come from `--port` / `--host` (vLLM 8000, SGLang 30000), the model from `--model`
/ `--model-path` or `vllm serve MODEL`: a path in the container, or a Hugging Face name found under
$HF_HOME (default /root/.cache/huggingface) in the container's environment.
"""
from __future__ import annotations

import ipaddress
import json
import posixpath
import re
from dataclasses import dataclass, field
from enum import Enum
from typing import Callable, Mapping, Sequence

from runtime.model.errors import InvalidInput, shown
from runtime.model.hooks import HookCall

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
class Call:
    """One hook call, relative to where the engine listens; `model_key`: its body is
    {model_key: the model its command line names}."""
    path: str
    body: bytes = b"{}"
    model_key: str = ""


@dataclass(frozen=True)
class Mode:
    """What an engine gives back before a capture and how it takes it again."""
    quiesce: tuple[Call, ...]
    resume: tuple[Call, ...]
    reads_model: bool = False       # its resume reads the model's files again (rewarm warms them)


@dataclass(frozen=True, kw_only=True)
class Engine:
    """A stock serving engine rewarm drives through its own HTTP endpoints: one entry of ENGINES."""
    name: str
    default_port: int
    model_flags: tuple[str, ...]                  # where its command line names the model
    needs_flag: str                               # without it the engine does not answer its hooks
    needs_env: str | None                         # NAME that must be 1 in its environment, if any
    hint: str                                     # said when a hook fails: what the engine needs
    modes: Mapping[SleepLevel | None, Mode]       # by rewarm.dev/sleep-level; None alone: it takes none
    default_mode: SleepLevel | None
    ready_path: str = "/health"
    advice: Callable[[Sequence[str], Sequence[str]], str] = lambda args, env: ""   # for its reads_model mode
    flag_modes: Mapping[str, Mode] = field(default_factory=dict)   # a switch of its own that changes the mode

    def mode(self, level: SleepLevel | None) -> Mode:
        """The mode a sleep level asks for (None: this engine's default); an engine without levels refuses one."""
        if level is not None and level not in self.modes:
            if None in self.modes:
                raise InvalidInput(f"rewarm.dev/engine: {self.name} takes no rewarm.dev/sleep-level")
            raise InvalidInput(f"rewarm.dev/engine: {self.name} has no sleep level {level.value!r}")
        return self.modes[level if level is not None else self.default_mode]


@dataclass(frozen=True)
class Preset:
    quiesce: tuple[HookCall, ...]
    resume: tuple[HookCall, ...]
    ready_http: str
    reads_back: tuple[str, ...] = ()   # container paths (files or directories) the worker reads again on resume
    advice: str = ""                   # what would make this engine's restore faster (its events and doctor say it)


# vLLM's loaders reloading 14.5 GB of weights from the page cache onto an H200 (benchmarks/results/
# weight_loaders_h200.md), and what that made of a level-2 restore to the first token at vLLM's default
# memory share (vllm_8b_*_h100-mem09.md).
FAST_LOADER = ("--load-format instanttensor with INSTANTTENSOR_BACKEND=MMAP (pip install instanttensor) reloads "
               "from the page cache at 42.6 GB/s against 7.9 GB/s for the default loader on an H200, and an 8B "
               "restore to its first token took 1.88 s instead of 3.44 s on an H100")
FASTSAFETENSORS = ("fastsafetensors keeps GPU memory of its own after vLLM's reload_weights: at "
                   "--gpu-memory-utilization 0.9 an 8B server's KV cache then did not fit when woken (CUDA out of "
                   "memory, so the restore fell back to a cold start on an H100); " + FAST_LOADER)
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


def needs(engine: Engine, args: Sequence[str], env: Sequence[str]) -> None:
    """Refuse a preset whose engine cannot answer it, naming what it lacks (a `--config` file may
    hold the flag: then the engine's answer tells)."""
    on = any(a == engine.needs_flag or a.startswith(engine.needs_flag + "=")
             and a.split("=", 1)[1].lower() in ("1", "true") for a in args)
    if not on and "--config" not in " ".join(args):
        raise InvalidInput(f"rewarm.dev/engine: {engine.name} needs {engine.needs_flag} on the engine's command line "
                           "(its sleep and wake hooks)")
    if engine.needs_env and f"{engine.needs_env}=1" not in env:
        raise InvalidInput(f"rewarm.dev/engine: {engine.name} needs {engine.needs_env}=1 in the container's "
                           "environment (the engine's /sleep and /wake_up endpoints)")


def model_of(engine: Engine, args: Sequence[str]) -> str | None:
    """The model its command line names: a model flag, or `vllm serve MODEL`."""
    model = flag(args, *engine.model_flags)
    if model is None and "serve" in args[:3]:
        rest = list(args[args.index("serve") + 1:])
        model = rest[0] if rest and not rest[0].startswith("-") else None
    return model


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
    if load_format == "fastsafetensors":
        return FASTSAFETENSORS
    return ""


_WEIGHTS_BACK = (Call("/wake_up?tags=weights"), Call("/collective_rpc", b'{"method": "reload_weights"}'))
_KV_BACK = Call("/wake_up?tags=kv_cache")

ENGINES: dict[str, Engine] = {e.name: e for e in (
    Engine(name="vllm", default_port=8000, model_flags=("--model",), needs_flag="--enable-sleep-mode",
           needs_env="VLLM_SERVER_DEV_MODE", hint=VLLM_NEEDS, modes={
        SleepLevel.WEIGHTS_TO_HOST: Mode((Call("/sleep?level=1"),), (Call("/wake_up"),)),
        SleepLevel.WEIGHTS_DROPPED: Mode((Call("/sleep?level=2"),), (*_WEIGHTS_BACK, _KV_BACK), reads_model=True),
        SleepLevel.WEIGHTS_RESIDENT: Mode((Call("/sleep?level=2"), *_WEIGHTS_BACK), (_KV_BACK,)),
    }, default_mode=DEFAULT_SLEEP_LEVEL, advice=_loader_advice),
    Engine(name="sglang", default_port=30000, model_flags=("--model-path", "--model"),
           needs_flag="--enable-memory-saver", needs_env=None, hint=SGLANG_NEEDS, modes={
        None: Mode((Call("/release_memory_occupation"),), (Call("/resume_memory_occupation"),
                   Call("/update_weights_from_disk", model_key="model_path")), reads_model=True),
    }, default_mode=None, flag_modes={
        "--enable-weights-cpu-backup": Mode((Call("/release_memory_occupation"),), (Call("/resume_memory_occupation"),)),
    }),
)}


def preset(name: str, args: Sequence[str], env: Sequence[str], level: SleepLevel | None = None) -> Preset:
    """The hooks of engine `name` as its command line and environment start it, in the mode `level`
    asks for (None: the engine's default)."""
    engine = ENGINES.get(name)
    if engine is None:
        raise InvalidInput(f"unknown engine {name[:40]!r} (known: {', '.join(ENGINES)})")
    mode = engine.mode(level)
    for switch, switched in engine.flag_modes.items():
        if switch in args:
            mode = switched
    needs(engine, args, env)
    base = _base(args, engine.default_port)
    model = model_of(engine, args)

    def body(c: Call) -> bytes:
        if not c.model_key:
            return c.body
        if model is None:
            raise InvalidInput(f"rewarm.dev/engine: {engine.name} needs {engine.model_flags[0]} on the engine's "
                               f"command line ({c.path} reads the weights back from it; rewarm does not read "
                               "--config files)")
        return json.dumps({c.model_key: model}).encode()

    def calls(these: tuple[Call, ...]) -> tuple[HookCall, ...]:
        return tuple(HookCall(base + c.path, body=body(c), hint=engine.hint) for c in these)
    found = model_dir(model, env) if mode.reads_model else None
    return Preset(calls(mode.quiesce), calls(mode.resume), base + engine.ready_path, (found,) if found else (),
                  engine.advice(args, env) if mode.reads_model else "")
