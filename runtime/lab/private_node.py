"""A node config of the lab's own for tests, benchmarks and the demo: the store, event log and
metrics in a directory of its own. It starts from the config $REWARM_CONFIG names, if any (a GPU
host names its runtime, CRIU and `network-lock skip` there), and the caller then points
$REWARM_CONFIG at the result, so every rewarm command it runs uses it."""
from __future__ import annotations

import json
import os
import shutil

from runtime.host import settings_file
from runtime.front.names import CONFIG_ENV


def write_config(top: str, **overrides: object) -> str:
    """Write TOP/config.json for a private store under TOP; return its path."""
    base = settings_file.load().to_json() if os.environ.get(CONFIG_ENV) else {"criu": shutil.which("criu") or "criu"}
    cfg = {**base, "store": os.path.join(top, "store"), "event_log": os.path.join(top, "events.jsonl"),
           "metrics_file": os.path.join(top, "metrics", "rewarm.prom"), **overrides}
    if not os.environ.get(CONFIG_ENV):   # a node of its own; one made from a node's config shares its key
        cfg.setdefault("fingerprint_key_file", os.path.join(top, "fingerprint.key"))
    path = os.path.join(top, "config.json")
    with open(path, "w") as f:
        json.dump(cfg, f, indent=2)
    return path
