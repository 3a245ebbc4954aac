"""manifest.json: thaw's record of a snapshot, checked against config/manifest.schema.json."""
from __future__ import annotations

import functools
import os
from typing import Any

from runtime import layout

SCHEMA_PATH = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                           "config", "manifest.schema.json")


@functools.cache
def _validator() -> Any:
    import jsonschema  # only the restore, capture and CLI paths pay for this import
    return jsonschema.Draft202012Validator(layout.read_json(SCHEMA_PATH))


def validate(meta: Any) -> None:
    """Raise ValueError naming the first field that breaks the schema."""
    error = next(iter(_validator().iter_errors(meta)), None)
    if error is not None:
        where = "/".join(str(p) for p in error.absolute_path) or "(top)"
        raise ValueError(f"manifest.json: {where}: {error.message}")
