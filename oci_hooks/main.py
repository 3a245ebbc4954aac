"""`thaw-hook prestart|poststop`: OCI hooks. The runtime writes the container's state (JSON) on
stdin. thaw-runc injects both into the config.json of annotated containers; CRI-O and Podman run
them through hooks.d (`thaw install --runtime crio|podman`).

prestart  validates the thaw annotations. For a container being restored (thaw-runc names the
          snapshot entry in config.json): checks that the GPUs it will see match the snapshot's, and
          in its network namespace brings loopback up and adds the addresses the snapshot's sockets
          were bound to. Runs during `runc restore`, before CRIU restores the sockets.
poststop  removes thaw's per-container work files, records how the container had started (restored
          or cold) in the event log, and rewrites the Prometheus metrics file. Store locks are
          flocks held by the processes that took them: nothing is left to release.
"""
from __future__ import annotations

import calendar
import json
import os
import shutil
import sys
import time
from typing import Any

from runtime import annotations as ann
from runtime import runtime_log
from runtime import settings as settings_mod

STAGES = ("prestart", "poststop")


class HookError(Exception):
    pass


def read_state(stream) -> dict:  # type: ignore[no-untyped-def]
    try:
        state = json.load(stream)
    except ValueError as e:
        raise HookError(f"the OCI state on stdin is not JSON: {e}")
    if not isinstance(state, dict) or not state.get("id") or not state.get("ociVersion"):
        raise HookError("the OCI state on stdin lacks 'ociVersion' or 'id'")
    return state


def _spec(state: dict) -> dict[str, Any]:
    try:
        with open(os.path.join(state.get("bundle") or ".", "config.json"), encoding="utf-8") as f:
            return json.load(f)
    except (OSError, ValueError):
        return {}


def _netns_path(state: dict, spec: dict[str, Any]) -> str:
    for ns in (spec.get("linux") or {}).get("namespaces") or []:
        if ns.get("type") == "network" and ns.get("path"):
            return ns["path"]
    if not state.get("pid"):
        raise HookError("no network namespace: the spec names none and the state has no pid")
    return f"/proc/{state['pid']}/ns/net"


def _check_gpus(manifest: dict[str, Any], spec: dict[str, Any]) -> None:
    recorded = manifest["fingerprint"].get("gpu")
    if not recorded:
        return
    from runtime import gpu_inventory
    here = gpu_inventory.fingerprint_of_spec(spec)
    for key in ("model", "count"):
        if (here or {}).get(key) != recorded.get(key):
            raise HookError(f"snapshot {manifest['namespace']}/{manifest['name']} was captured with "
                            f"{recorded.get('count')} x {recorded.get('model')}; this container would see "
                            f"{(here or {}).get('count', 0)} x {(here or {}).get('model', 'no GPU')}: CUDA restore cannot work")


def prestart(state: dict, settings: settings_mod.Settings) -> None:
    annotations = state.get("annotations") or {}
    try:
        request = ann.parse(annotations)
    except ann.AnnotationError as e:
        raise HookError(str(e))
    entry_path = annotations.get(ann.ENTRY_KEY)
    if not entry_path:
        return  # a cold start: nothing to prepare
    from runtime import layout  # thaw-runc checked this entry a moment ago: no schema pass (jsonschema: ~50 ms)
    manifest = layout.read_json(os.path.join(entry_path, layout.MANIFEST))
    spec = _spec(state)
    _check_gpus(manifest, spec)
    addresses = manifest.get("bound_addresses") or []
    from oci_hooks import netns
    added = netns.prepare(_netns_path(state, spec), addresses)
    runtime_log.event(settings.event_log, "prestart", container=state["id"], namespace=manifest["namespace"],
                      snapshot=request.snapshot, addresses_added=added)


def poststop(state: dict, settings: settings_mod.Settings) -> None:
    from runtime.restore import work_dir_for
    shutil.rmtree(work_dir_for(os.environ.get("THAW_RUNTIME_ROOT", "/run/runc"), state["id"]), ignore_errors=True)
    annotations = state.get("annotations") or {}
    events = runtime_log.read_events(settings.event_log)
    started = [e for e in events if e.get("container") == state["id"]
               and e.get("event") in ("restored", "cold-start", "restore-refused")]
    start = started[-1] if started else {}
    outcome = {"restored": "restored", "cold-start": "cold", "restore-refused": "refused"}.get(start.get("event"), "unknown")
    runtime_log.event(settings.event_log, "stopped", container=state["id"], namespace=ann.namespace_of(annotations),
                      snapshot=annotations.get(ann.SNAPSHOT, ""), outcome=outcome, reason=start.get("reason", ""),
                      start_seconds=start.get("seconds"), lifetime_seconds=_seconds_since(start.get("time")))
    if settings.metrics_file:
        from oci_hooks import metrics
        metrics.write(settings.metrics_file, runtime_log.read_events(settings.event_log))


def _seconds_since(stamp: str | None) -> float | None:
    """Seconds since an event-log time (RFC 3339, nanoseconds, UTC)."""
    if not stamp:
        return None
    whole, _, fraction = stamp.rstrip("Z").partition(".")
    then = calendar.timegm(time.strptime(whole, "%Y-%m-%dT%H:%M:%S")) + float(f"0.{fraction or 0}")
    return round(time.time() - then, 3)


def main() -> None:
    if len(sys.argv) != 2 or sys.argv[1] not in STAGES:
        raise SystemExit(f"usage: thaw-hook {'|'.join(STAGES)}  (OCI state on stdin)")
    try:
        state = read_state(sys.stdin)
        if not ann.wants_thaw(state.get("annotations") or {}):
            return
        settings = settings_mod.load()
        (prestart if sys.argv[1] == "prestart" else poststop)(state, settings)
    except (HookError, settings_mod.SettingsError, OSError, ValueError) as e:
        raise SystemExit(f"thaw-hook {sys.argv[1]}: {e}")
