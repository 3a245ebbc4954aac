"""`rewarm-hook prestart|poststop`: OCI hooks. The runtime writes the container's state (JSON) on
stdin. rewarm-runc injects both into the config.json of annotated containers; CRI-O and Podman run
them through hooks.d (`rewarm install --runtime crio|podman`).

prestart  validates the rewarm annotations. For a container being restored (rewarm-runc names the
          snapshot entry in config.json): checks that the GPUs it will see match the snapshot's, and
          in its network namespace brings loopback up and adds the addresses the snapshot's sockets
          were bound to. Runs during `runc restore`, before CRIU restores the sockets. rewarm-runc
          adds it only where runc makes the namespace: a named one (a pod's) it prepares itself,
          before the restore, saving the hook's process start on the restore's path.
poststop  removes rewarm's per-container work files, records how the container had started
          (restored or cold) in the event log, and rewrites the Prometheus metrics file (the same
          metrics as `rewarm agent`'s /metrics). Both read only a bounded part of the log: its start
          backwards from the end, the metrics' running totals the lines since their last fold.
          Store locks are flocks held by the processes that took them: nothing is left to release.
"""
from __future__ import annotations

import calendar
import json
import os
import sys
import time
from typing import IO, Any

from runtime.adapters import logs, mounts, settings_file
from runtime.adapters.files import owner_alive, read_json, remove_tree
from runtime.model import annotations as ann
from runtime.model import layout, oci_spec
from runtime.model.errors import HookError, RewarmError
from runtime.model.events import START_KINDS, EventKind, Outcome
from runtime.model.settings import Settings
from runtime.model.oci_spec import Spec

STAGES = ("prestart", "poststop")
RUNTIME_ROOT_ENV = "REWARM_RUNTIME_ROOT"   # set by rewarm-runc in the hook's environment


def read_state(stream: IO[str]) -> dict[str, Any]:
    try:
        state = json.load(stream)
    except ValueError as e:
        raise HookError(f"the OCI state on stdin is not JSON: {e}") from e
    if not isinstance(state, dict) or not state.get("id") or not state.get("ociVersion"):
        raise HookError("the OCI state on stdin lacks 'ociVersion' or 'id'")
    return state


def _spec(state: dict[str, Any]) -> Spec:
    try:
        return oci_spec.parsed(read_json(os.path.join(state.get("bundle") or ".", "config.json")))
    except (OSError, ValueError):
        return Spec()


def _netns_path(state: dict[str, Any], spec: Spec) -> str:
    path = oci_spec.netns_path(spec)
    if path:
        return path
    if not state.get("pid"):
        raise HookError("no network namespace: the spec names none and the state has no pid")
    return f"/proc/{state['pid']}/ns/net"


def _check_gpus(manifest: dict[str, Any], spec: Spec) -> None:
    recorded = manifest["fingerprint"].get("gpu")
    if not recorded:
        return
    from runtime.gpu import nvml
    here = nvml.fingerprint_of_spec(spec) or {}
    for key in ("model", "count"):
        if here.get(key) != recorded.get(key):
            raise HookError(f"snapshot {manifest['namespace']}/{manifest['name']} was captured with "
                            f"{recorded.get('count')} x {recorded.get('model')}; this container would see "
                            f"{here.get('count', 0)} x {here.get('model', 'no GPU')}: CUDA restore cannot work")


def prestart(state: dict[str, Any], settings: Settings) -> None:
    annotations = state.get("annotations") or {}
    spec = _spec(state)
    request = ann.parse(annotations, oci_spec.process(spec))
    entry_path = annotations.get(ann.ENTRY_KEY)
    if not entry_path:
        return  # a cold start: nothing to prepare
    # rewarm-runc checked this entry a moment ago: no schema pass here (jsonschema costs ~50 ms)
    manifest = read_json(os.path.join(entry_path, layout.MANIFEST))
    _check_gpus(manifest, spec)
    from runtime.adapters import netns_setup
    added = netns_setup.prepare(_netns_path(state, spec), manifest.get("bound_addresses") or [])
    logs.event(settings.event_log, EventKind.PRESTART, container=state["id"], namespace=manifest["namespace"],
               snapshot=request.snapshot, addresses_added=added)


def _restoring(work: str) -> bool:
    """Is an engine restoring into this container right now? (runc runs poststop when it cleans up
    after a failed restore; the engine then cleans up, records the outcome and cold starts.)"""
    return owner_alive(work)


def poststop(state: dict[str, Any], settings: Settings) -> None:
    work = layout.work_dir(os.environ.get(RUNTIME_ROOT_ENV, "/run/runc"), state["id"])
    if _restoring(work):
        return
    mounts.unmount_under(work)            # left by an engine that was killed midway: a CRIU's cgroup yard
    remove_tree(work, layout.WORK_ROOT)
    annotations = state.get("annotations") or {}
    start = logs.last_event(settings.event_log, state["id"], START_KINDS) or {}
    try:
        namespace = ann.namespace_of(annotations)
    except RewarmError:
        namespace = "(invalid)"   # the create refused it; the stop is still recorded
    logs.event(settings.event_log, EventKind.STOPPED, container=state["id"], namespace=namespace, snapshot=annotations.get(ann.SNAPSHOT, ""), outcome=Outcome.of_start(start.get("event")).value,
               reason=start.get("reason", ""), start_seconds=start.get("seconds"),
               lifetime_seconds=_seconds_since(start.get("time")))
    if settings.metrics_file:
        from runtime.adapters import metrics
        # The log's lines since the last fold, and the store's use from its entries' manifests.
        metrics.write(settings.metrics_file, metrics.served(settings.event_log, settings.store))


def _seconds_since(stamp: str | None) -> float | None:
    """Seconds since an event-log time (RFC 3339, nanoseconds, UTC)."""
    if not stamp:
        return None
    whole, _, fraction = stamp.rstrip("Z").partition(".")
    then = calendar.timegm(time.strptime(whole, "%Y-%m-%dT%H:%M:%S")) + float(f"0.{fraction or 0}")
    return round(time.time() - then, 3)


def main() -> None:
    if len(sys.argv) != 2 or sys.argv[1] not in STAGES:
        raise SystemExit(f"usage: rewarm-hook {'|'.join(STAGES)}  (OCI state on stdin)")
    try:
        state = read_state(sys.stdin)
        if not ann.wants_rewarm(state.get("annotations") or {}):
            return
        settings = settings_file.load()
        (prestart if sys.argv[1] == "prestart" else poststop)(state, settings)
    except (RewarmError, OSError, ValueError) as e:
        raise SystemExit(f"rewarm-hook {sys.argv[1]}: {e}") from e
