"""`thaw-hook prestart|poststop`: OCI hook entry point. The runtime writes the container's state
(JSON) on stdin. For now the hooks check the thaw annotations (prestart) and remove thaw's
per-container work files (poststop); thaw-runc does not inject them yet.
"""
from __future__ import annotations

import json
import os
import shutil
import sys

from runtime import annotations as ann

STAGES = ("prestart", "poststop")


def read_state(stream) -> dict:  # type: ignore[no-untyped-def]
    try:
        state = json.load(stream)
    except ValueError as e:
        raise SystemExit(f"thaw-hook: the OCI state on stdin is not JSON: {e}")
    if not isinstance(state, dict) or not state.get("id") or not state.get("ociVersion"):
        raise SystemExit("thaw-hook: the OCI state on stdin lacks 'ociVersion' or 'id'")
    return state


def main() -> None:
    if len(sys.argv) != 2 or sys.argv[1] not in STAGES:
        raise SystemExit(f"usage: thaw-hook {'|'.join(STAGES)}  (OCI state on stdin)")
    state = read_state(sys.stdin)
    annotations = state.get("annotations") or {}
    if not ann.wants_thaw(annotations):
        return
    if sys.argv[1] == "prestart":
        try:
            ann.parse(annotations)
        except ann.AnnotationError as e:
            raise SystemExit(f"thaw-hook: {e}")
    else:
        root = os.environ.get("THAW_RUNTIME_ROOT", "/run/runc")
        from runtime.restore import work_dir_for
        shutil.rmtree(work_dir_for(root, state["id"]), ignore_errors=True)
