"""CRIU options for inference workers, handed to runc through a CRIU config file.

runc has no flag for most CRIU options, but it passes a per-container config file named by the
`org.criu.config` annotation to CRIU. rewarm writes one file for the node and points every
container it manages at it, for checkpoint and restore alike.
"""
from __future__ import annotations

import os
import subprocess

from runtime.host import node_facts
from runtime.host.files import write_if_changed
from runtime.model import cuda_env
from runtime.model.settings import Settings

RUNC_CONFIG_ANNOTATION = "org.criu.config"

# Why each option: workers listen on TCP and talk to clients; restore happens in another pod.
BASE_OPTIONS = (
    "tcp-close",          # established connections: not dumped, restored closed (clients retry)
    "skip-in-flight",     # half-open connections in the accept queue are dropped, not fatal
    "file-locks",         # workers and their libraries take flock()s
    "ext-unix-sk",        # sockets to the outside (e.g. a metrics agent) must not fail the dump
    "link-remap",         # open files that were unlinked (temp files) are carried along
    "ghost-limit 512M",   # ... up to this size each
)


def config_path(settings: Settings) -> str:
    return os.path.join(settings.store, "criu", "runc.conf")


PARALLEL_FILL = "Parallel-fill:"   # `criu --version` of rewarm's build (packaging/criu) says so


def has_parallel_fill(criu: str) -> bool:
    """Whether this CRIU has rewarm's parallel memory restore (restore-threads, restore-thp)."""
    try:
        out = node_facts.version_output((criu, "--version"))
    except (OSError, subprocess.TimeoutExpired):
        return False
    return any(line.startswith(PARALLEL_FILL) for line in out.splitlines())


def render(settings: Settings) -> str:
    lines = ["# Written by rewarm for the containers it manages; edit rewarm's config instead.", *BASE_OPTIONS]
    if settings.criu_plugin_dir and os.path.isdir(settings.criu_plugin_dir):
        lines.append(f"libdir {settings.criu_plugin_dir}")  # cuda_plugin.so: GPU memory
    if has_parallel_fill(settings.criu):   # a stock CRIU would refuse these lines
        lines.append(f"restore-threads {settings.restore_threads}")   # readers filling memory (1: stock)
        if settings.restore_huge_pages:
            lines.append("restore-thp")   # fault huge pages while filling (never where NOHUGEPAGE was recorded)
    lines += settings.criu_options
    return "\n".join(lines) + "\n"


def ensure_config(settings: Settings) -> str:
    """Write the node's CRIU config file if it is missing or stale; return its path."""
    path = config_path(settings)
    os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
    write_if_changed(path, render(settings))
    return path


def runtime_env(settings: Settings, path_first: str, **extra: str) -> dict[str, str]:
    """Environment for the runtime's checkpoint/restore, which CRIU and its plugins inherit;
    `path_first` leads PATH (gpu/plugin_env.py: where the CUDA plugin finds cuda-checkpoint)."""
    env = dict(os.environ)
    env["PATH"] = path_first + os.pathsep + env.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
    env[cuda_env.LOCK_TIMEOUT_MS] = str(settings.cuda_lock_timeout_ms)
    env.update(extra)
    return env


# Error lines CRIU prints on the way that do not cause a failure: skipped when quoting the cause.
# The CUDA plugin's complaint comes from NVIDIA's cuda-checkpoint about a process without CUDA state,
# which the plugin then leaves alone (rewarm's answers "nothing to do" instead).
HARMLESS_ERRORS = ("RLIMIT_NOFILE", "rlimit", "cuda-checkpoint to retrieve restore tid")


def first_error(log_path: str) -> str:
    """The first `Error` line of a CRIU log that is not known to be harmless: usually the cause."""
    try:
        with open(log_path, encoding="utf-8", errors="replace") as f:
            for line in f:
                if "Error" in line and not any(h in line for h in HARMLESS_ERRORS):
                    return line.strip()
    except OSError:
        pass
    return ""
