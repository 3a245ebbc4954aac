"""The files of config/ (JSON schemas, hooks.d templates, Kubernetes manifests), shipped inside the
package as `runtime/config` so that an installed rewarm finds them as well as a checkout does."""
from __future__ import annotations

import json
from importlib.resources import files
from importlib.resources.abc import Traversable
from typing import Any


def config_file(*parts: str) -> Traversable:
    return files("runtime").joinpath("config", *parts)


def config_json(*parts: str) -> Any:
    return json.loads(config_file(*parts).read_text(encoding="utf-8"))
