"""thaw-runc: a runc-compatible OCI runtime.

Every runc verb of every container on the node comes through here, so the common case must cost
almost nothing: read argv, and exec the real runtime with the same argv (the exec keeps pid, stdio,
signals and exit code). Only two verbs ever look further:
  create  reads the bundle's config.json; with thaw.dev/ annotations the restore engine takes over
  start   of a container thaw restored is a no-op (the process already runs)
"""
from __future__ import annotations

import os
import sys

from runtime import runc_argv

RESTORED_MARKER = "thaw-restored"   # lives in runc's own state dir, so `runc delete` removes it


def _runtime() -> str:
    """The real runtime from thaw's config; the full config is loaded only for annotated creates."""
    path = os.environ.get("THAW_CONFIG") or "/etc/thaw/config.json"
    try:
        with open(path, encoding="utf-8") as f:
            import json  # ~8 ms with its `re`: paid only where a config file exists
            return str(json.load(f).get("runtime") or "runc")
    except (OSError, ValueError, AttributeError):
        return "runc"  # a broken config must not stop containers; annotated creates report it


def _annotations(bundle: str) -> dict[str, str]:
    import json
    try:
        with open(os.path.join(bundle, "config.json"), encoding="utf-8") as f:
            return json.load(f).get("annotations") or {}
    except (OSError, ValueError, AttributeError):
        return {}  # the real runtime will report a broken bundle in its own words


def _start_of_restored(call: runc_argv.RuncCall) -> bool:
    """The first `start` after a restore succeeds without doing anything."""
    marker = os.path.join(call.root, str(call.container_id), RESTORED_MARKER)
    try:
        os.rename(marker, marker + ".started")
        return True
    except OSError:
        return False


def main() -> None:
    argv = sys.argv[1:]
    call = runc_argv.parse(argv)
    if call.verb == "create" and call.container_id:
        annotations = _annotations(call.bundle)
        if any(k.startswith("thaw.dev/") for k in annotations):
            from runtime import create_path  # the heavy part, only for annotated containers
            create_path.create(call, annotations)  # execs or exits
    elif call.verb == "start" and call.container_id and _start_of_restored(call):
        sys.exit(0)
    runtime = _runtime()
    os.execvp(runtime, [runtime, *argv])


if __name__ == "__main__":
    main()
