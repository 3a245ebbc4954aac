"""The few names the hot path shares with the rest of rewarm."""
from __future__ import annotations

ANNOTATION_PREFIX = "rewarm.dev/"            # every user-facing annotation starts with it
CONFIG_ENV = "REWARM_CONFIG"                 # names another node config file (tools, tests, benchmarks)
DEFAULT_CONFIG = "/etc/rewarm/config.json"
RESTORED_MARKER = "rewarm-restored"          # in runc's state dir of a restored container: `start` is a no-op


def config_path() -> str:
    import os
    return os.environ.get(CONFIG_ENV) or DEFAULT_CONFIG
