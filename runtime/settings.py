"""thaw's node configuration: one JSON file, `/etc/thaw/config.json` (or $THAW_CONFIG).

Loaded on every runc call to find the real runtime, so it uses nothing heavier than `json`.
Every key is optional; `config/thaw-config.schema.json` documents and validates them
(`thaw doctor` checks the file against it).
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field, fields

DEFAULT_PATH = "/etc/thaw/config.json"


@dataclass(frozen=True)
class Settings:
    runtime: str = "runc"                       # real OCI runtime: a name on PATH or a path (runc, crun)
    store: str = "/var/lib/thaw"                # snapshot store root (created 0700)
    criu: str = "criu"                          # CRIU binary given to the runtime (--criu)
    criu_plugin_dir: str = "/opt/thaw/criu-plugins"   # CRIU plugins (cuda_plugin.so); "" = none
    criu_options: list[str] = field(default_factory=list)  # extra CRIU config-file lines
    env_ignore: list[str] = field(default_factory=lambda: [
        "HOSTNAME", "KUBERNETES_*", "*_SERVICE_HOST", "*_SERVICE_PORT", "*_SERVICE_PORT_*",
        "*_PORT", "*_PORT_*"])                  # env names (globs) left out of the fingerprint
    shared_namespaces: list[str] = field(default_factory=list)  # namespaces whose snapshots any namespace may restore
    event_log: str = "/var/log/thaw/events.jsonl"  # one JSON line per restore / cold start / capture
    pod_log_notice: bool = True                 # write one line to the container's stderr saying what thaw did
    verify: str = "sha256"                      # "sha256": checksum every file before restore (cached by ctime); "size": sizes only
    capture_timeout_s: int = 600                # longest a capture may take
    restore_timeout_s: int = 300                # longest a restore may take before it counts as failed
    cuda_checkpoint: str = ""                   # "" = thaw's own cuda-checkpoint; or a path to NVIDIA's
    cuda_lock_timeout_ms: int = 10000           # how long capture waits for in-flight GPU work
    hook_timeout_s: int = 60                    # longest a worker's quiesce / resume hook may take
    inject_hooks: bool = True                   # thaw-runc adds thaw-hook prestart/poststop to annotated containers
    metrics_file: str = "/var/lib/node_exporter/textfile_collector/thaw.prom"  # Prometheus text file ("" = none)
    prefetch_threads: int = 0                   # readers that pull a snapshot's pages into the page cache ahead of CRIU (0: off)


class SettingsError(ValueError):
    pass


def load(path: str | None = None) -> Settings:
    path = path or os.environ.get("THAW_CONFIG") or DEFAULT_PATH
    try:
        with open(path, encoding="utf-8") as f:
            raw = json.load(f)
    except FileNotFoundError:
        return Settings()
    except (OSError, ValueError) as e:
        raise SettingsError(f"cannot read thaw config {path}: {e}") from e
    if not isinstance(raw, dict):
        raise SettingsError(f"thaw config {path} must be a JSON object")
    known = {f.name for f in fields(Settings)}
    unknown = sorted(set(raw) - known)
    if unknown:
        raise SettingsError(f"thaw config {path}: unknown keys {', '.join(unknown)}")
    return Settings(**raw)
