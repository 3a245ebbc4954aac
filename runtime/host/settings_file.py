"""Reading the node's rewarm config file (`/etc/rewarm/config.json` or $REWARM_CONFIG)."""
from __future__ import annotations

import json
from typing import Any

from runtime.front.names import config_path
from runtime.model.errors import SettingsError
from runtime.model.settings import Settings, from_mapping


def _unique(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """An object whose keys are unique. JSON readers disagree on a repeated key (rewarm-runc's sh
    front door reads the first "runtime", the json module keeps the last): refuse it instead."""
    seen: dict[str, Any] = {}
    for key, value in pairs:
        if key in seen:
            raise ValueError(f"key {key!r} is given more than once")
        seen[key] = value
    return seen


def read_raw(path: str) -> Any:
    """The file's JSON, with repeated keys refused. FileNotFoundError passes through."""
    with open(path, encoding="utf-8") as f:
        return json.load(f, object_pairs_hook=_unique)


def load(path: str | None = None) -> Settings:
    path = path or config_path()
    try:
        raw = read_raw(path)
    except FileNotFoundError:
        return Settings()
    except (OSError, ValueError) as e:
        raise SettingsError(f"cannot read rewarm config {path}: {e}") from e
    return from_mapping(raw, path)
