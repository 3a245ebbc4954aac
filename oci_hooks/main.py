"""`rewarm-hook prestart|poststop`: OCI hooks. The runtime writes the container's state (JSON) on
stdin. rewarm-runc injects both into the config.json of annotated containers; CRI-O and Podman run
them through hooks.d (`rewarm install --runtime crio|podman`).

prestart  for a container being restored into a network namespace that runc makes, does what the
          restore decided and wrote into its work dir (restore.tell_prestart): brings loopback up
          and adds the addresses the snapshot's sockets were bound to. It runs during `runc
          restore`, before CRIU restores the sockets, and parses nothing again (the annotations,
          the spec and the snapshot were judged by rewarm-runc). rewarm-runc adds it only where runc
          makes the namespace: a named one (a pod's) it prepares itself, before the restore, and the
          host's (hostNetwork) is never touched. Run by CRI-O's or Podman's hooks.d (no rewarm-runc),
          it validates the rewarm annotations instead.
poststop  removes rewarm's per-container work files, records how the container had started
          (restored or cold) in the event log, and rewrites the Prometheus metrics file (the same
          metrics as `rewarm agent`'s /metrics). Both read only a bounded part of the log: its start
          backwards from the end, the metrics' running totals the lines since their last fold.
          Store locks are flocks held by the processes that took them: nothing is left to release.
"""
from __future__ import annotations

import json
import os
import sys
import time
from typing import IO, Any

from runtime.container import mounts
from runtime.host import settings_file
from runtime.observe import logs
from runtime.host.files import owner_alive, read_json, remove_tree
from runtime.model import annotations as ann
from runtime.model import clock, layout
from runtime.model.errors import HookError, RewarmError
from runtime.model.events import START_KINDS, EventKind, Outcome
from runtime.model.settings import Settings

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


def prestart(state: dict[str, Any], settings: Settings) -> None:
    """Under rewarm-runc (which names its runtime root in the hook's environment), during a restore,
    what rewarm-runc decided (restore.tell_prestart): the snapshot's bound addresses added to the
    namespace runc made; nothing is parsed again, not the annotations, the spec nor the snapshot's
    manifest. Run by CRI-O's or Podman's hooks.d, without rewarm-runc: the annotations validated,
    so that a bad value fails the container with the annotation's name."""
    if RUNTIME_ROOT_ENV not in os.environ:
        _validate(state)
        return
    try:
        told = read_json(os.path.join(_work_dir(state), layout.PRESTART))
    except FileNotFoundError:
        return   # a cold start, or a namespace the restore prepared itself: nothing to do
    except (OSError, ValueError) as e:
        raise HookError(f"{layout.PRESTART} of the restore is unreadable: {e}") from e
    if not state.get("pid"):
        raise HookError("no network namespace: the state has no pid")
    from runtime.netns import netns_setup
    added = netns_setup.prepare(f"/proc/{state['pid']}/ns/net", told.get("bound_addresses") or [])
    logs.event(settings.event_log, EventKind.PRESTART, container=state["id"], namespace=told.get("namespace", ""),
               snapshot=told.get("snapshot", ""), addresses_added=added)


def _validate(state: dict[str, Any]) -> None:
    from runtime.container import spec_file
    from runtime.model import oci_spec
    try:
        process = oci_spec.process(spec_file.read(state.get("bundle") or "."))
    except (OSError, ValueError):
        process = {}   # the presets' flags are then judged without the command line
    ann.parse(state.get("annotations") or {}, process)


def _work_dir(state: dict[str, Any]) -> str:
    return layout.work_dir(os.environ.get(RUNTIME_ROOT_ENV, "/run/runc"), state["id"])


def _restoring(work: str) -> bool:
    """Is an engine restoring into this container right now? (runc runs poststop when it cleans up
    after a failed restore; the engine then cleans up, records the outcome and cold starts.)"""
    return owner_alive(work)


def poststop(state: dict[str, Any], settings: Settings) -> None:
    work = _work_dir(state)
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
        from runtime.observe import metrics
        # The log's lines since the last fold, and the store's use from its entries' manifests.
        metrics.write(settings.metrics_file, metrics.served(settings.event_log, settings.store))


def _seconds_since(stamp: str | None) -> float | None:
    """Seconds since an event-log time (RFC 3339, nanoseconds, UTC)."""
    if not stamp:
        return None
    return round(time.time() - clock.seconds_of(stamp), 3)


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
