"""rewarm-runc-engine: the Python half of the runc-compatible runtime.

rewarm-runc (packaging/bin, POSIX sh) sees every verb first, answers the first `start` of a container
rewarm restored itself, and sends here only the `create` (or `run`) of a bundle with rewarm.dev/ annotations.
Called directly, this behaves the same: argv only, then exec the real runtime with the same argv
(the exec keeps pid, stdio, signals and exit code), except
  create  with rewarm.dev/ annotations: the engine decides restore or cold start
  start   of a container rewarm restored: a no-op (the process already runs)
"""
from __future__ import annotations

import os
import sys

from runtime.front import runc_argv
from runtime.front.names import ANNOTATION_PREFIX, RESTORED_MARKER, config_path


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


def annotations_of(bundle: str) -> dict[str, str]:
    try:
        with open(os.path.join(bundle, "config.json"), "rb") as f:
            data = f.read()
    except OSError:
        return {}  # the real runtime will report a broken bundle in its own words
    if b'"' + ANNOTATION_PREFIX.encode() not in data:
        return {}  # the common case, decided without the json module
    import json
    try:
        found = json.loads(data).get("annotations") or {}
    except (ValueError, AttributeError):
        return {}
    return found if isinstance(found, dict) else {}


def start_of_restored(call: runc_argv.RuncCall) -> bool:
    """The first `start` after a restore succeeds without doing anything."""
    marker = os.path.join(call.root, str(call.container_id), RESTORED_MARKER)
    try:
        os.rename(marker, marker + ".started")
        return True
    except OSError:
        return False


def route(argv: list[str]) -> tuple[runc_argv.RuncCall, dict[str, str]]:
    """Return an annotated `create` or `run` (the call and its annotations); exec or exit otherwise."""
    call = runc_argv.parse(argv)
    if call.verb in ("create", "run") and call.container_id:
        annotations = annotations_of(call.bundle)
        if any(k.startswith(ANNOTATION_PREFIX) for k in annotations):
            return call, annotations
    elif call.verb == "start" and call.container_id and start_of_restored(call):
        sys.exit(0)
    runtime = real_runtime()
    os.execvp(runtime, [runtime, *argv])
