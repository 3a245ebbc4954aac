"""Reading the node's rewarm config file (`/etc/rewarm/config.json` or $REWARM_CONFIG)."""
from __future__ import annotations

import json

from runtime.front.names import config_path
from runtime.model.errors import SettingsError
from runtime.model.settings import Settings, from_mapping


def load(path: str | None = None) -> Settings:
    path = path or config_path()
    try:
        with open(path, encoding="utf-8") as f:
            raw = json.load(f)
    except FileNotFoundError:
        return Settings()
    except (OSError, ValueError) as e:
        raise SettingsError(f"cannot read rewarm config {path}: {e}") from e
    return from_mapping(raw, path)
