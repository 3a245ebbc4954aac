"""The real runtime rewarm-runc runs, as the engine reads it from rewarm's config without the json
module (the engine's cold start must run exactly what the sh door runs)."""
from __future__ import annotations

from runtime.front.names import config_path


def real_runtime() -> str:
    """The real runtime from rewarm's config; the full config is loaded only for annotated creates."""
    try:
        with open(config_path(), encoding="utf-8") as f:
            return top_level_string(f.read(), "runtime") or "runc"
    except (OSError, ValueError):
        return "runc"  # a broken config must not stop containers; annotated creates report it


def top_level_string(text: str, key: str) -> str | None:
    """The string value of `key` in a JSON object, read without the json module: importing it
    costs ~12 ms (it compiles regular expressions), paid on every runc verb of the node."""
    from _json import scanstring  # the C string decoder behind json; imports nothing
    depth, i, end = 0, 0, len(text)
    while i < end:
        c = text[i]
        if c == '"':
            word, i = scanstring(text, i + 1, True)
            if depth == 1 and word == key:
                rest = text[i:].lstrip()
                if rest.startswith(":"):
                    value = rest[1:].lstrip()
                    return scanstring(value, 1, True)[0] if value.startswith('"') else None
            continue
        depth += (c in "{[") - (c in "}]")
        i += 1
    return None
