"""`create` (or `run`) of a container that carries rewarm.dev/ annotations: restore it, or cold start it.

This module decides and reports; engine.restore does the work. Whatever happens, the caller gets
either a restored container or the real runtime's own `create` (unless rewarm.dev/fallback: fail),
and the reason is written to the runtime log, rewarm's event log and the pod's log.
"""
from __future__ import annotations

import os
import shutil
import sys
import time
import traceback
from typing import Any, NoReturn

from runtime.adapters import criu, logs, settings_file
from runtime.adapters.files import read_json, write_json
from runtime.adapters.runc import wait_forwarding
from runtime.front import dispatch
from runtime.front.runc_argv import RuncCall
from runtime.model import annotations as ann
from runtime.model import oci_spec, seccomp
from runtime.model.errors import RewarmError, SettingsError
from runtime.model.events import EventKind
from runtime.model.oci_spec import Spec
from runtime.model.settings import Settings

HOOK_TIMEOUT_S = 60


def _image_digest(call: RuncCall) -> str | None:
    """Under containerd, the digest of the container's image (containerd's metadata names the image;
    the runc shim's --root ends in the containerd namespace). None elsewhere."""
    if not os.environ.get("TTRPC_ADDRESS"):
        return None  # not started by containerd's runc shim
    from runtime.clients import containerd  # grpc: only under containerd
    address = containerd.address_from_shim_env()
    if not address:
        return None
    with containerd.Containerd(address, os.path.basename(call.root.rstrip("/"))) as client:
        return client.image_digest(client.container(str(call.container_id)).image)


def prepare_spec(call: RuncCall, settings: Settings, spec: Spec) -> Spec:
    """Point the container (`spec`, its config.json as read) at rewarm's CRIU options, for its
    restore now and its capture later, name its image by digest (the fingerprint of both sides then
    holds the digest), and keep io_uring, which CRIU cannot capture, out of it (model/seccomp.py)."""
    path = os.path.join(call.bundle, "config.json")
    if settings.block_io_uring and not seccomp.blocks_io_uring(spec):
        spec = seccomp.with_io_uring_blocked(spec)
        changed = True
    else:
        changed = False
    annotations = spec.setdefault("annotations", {})
    wanted = {criu.RUNC_CONFIG_ANNOTATION: criu.ensure_config(settings)}
    digest = _image_digest(call)
    if digest:
        wanted[ann.IMAGE_DIGEST_KEY] = digest
    hooks_added = settings.inject_hooks and _add_hooks(spec, call)
    if any(annotations.get(k) != v for k, v in wanted.items()) or hooks_added or changed:
        annotations.update(wanted)
        write_json(path, spec, mode=os.stat(path).st_mode & 0o777)
    return spec


def hook_binary() -> str | None:
    """rewarm-hook beside this engine (same installation), else the one on PATH."""
    beside = os.path.join(os.path.dirname(os.path.abspath(sys.argv[0])), "rewarm-hook")
    return beside if os.access(beside, os.X_OK) else shutil.which("rewarm-hook")


def _add_hooks(spec: Spec, call: RuncCall) -> bool:
    """rewarm-hook prestart and poststop after the container's own hooks (once). runc gives hooks an
    empty environment: name rewarm's config and the runtime root (where the work dir lives)."""
    hook = hook_binary()
    if not hook:
        logs.runtime_log(call, "warning", "rewarm-hook not found: the container runs without rewarm's hooks")
        return False
    env = [f"PATH={os.environ.get('PATH', '/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin')}",
           f"REWARM_RUNTIME_ROOT={call.root}"]
    env += [f"{k}={os.environ[k]}" for k in ("REWARM_CONFIG", "PYTHONPATH") if os.environ.get(k)]
    hooks: dict[str, list[dict[str, Any]]] = spec.setdefault("hooks", {})
    changed = False
    for stage in ("prestart", "poststop"):
        entries = hooks.setdefault(stage, [])
        if not any(h.get("path") == hook and (h.get("args") or [])[1:2] == [stage] for h in entries):
            entries.append({"path": hook, "args": ["rewarm-hook", stage], "env": env, "timeout": HOOK_TIMEOUT_S})
            changed = True
    return changed


def _settings() -> tuple[Settings, str | None]:
    """The node's settings, or the defaults and why not. Even then the real runtime is the one the
    sh front door runs for every other verb (the first "runtime" of the file), never a second guess."""
    try:
        return settings_file.load(), None
    except SettingsError as e:
        return Settings(runtime=dispatch.real_runtime()), str(e)


def create(call: RuncCall, annotations: dict[str, str]) -> NoReturn:
    settings, config_error = _settings()
    if ann.is_sandbox(annotations):  # pod annotations reach the pause container too: never restore it
        os.execvp(settings.runtime, [settings.runtime, *call.argv])
    started = time.monotonic()
    fail = ann.wants_fail(annotations)
    namespace, name, request = "default", annotations.get(ann.SNAPSHOT, ""), None
    try:
        if config_error:
            raise SettingsError(config_error)
        namespace = ann.namespace_of(annotations)
        spec: Spec = read_json(os.path.join(call.bundle, "config.json"))
        request = ann.parse(annotations, oci_spec.process(spec))
        spec = prepare_spec(call, settings, spec)
        if request.snapshot_ref:   # rewarm.dev/snapshot-ref: pull on a miss, within pull_timeout_s
            from runtime.engine import pull
            pull.on_miss(settings, spec, request, namespace, str(call.container_id))
        from runtime.engine import restore
        result = restore.restore(call, settings, spec, request, namespace)
    except (RewarmError, OSError, ValueError) as e:
        _cold_start(call, settings, namespace, name, str(e), fail, started, request)
    except Exception as e:  # a bug must not stop the pod: say where, then cold start
        logs.runtime_log(call, "error", "unexpected error, traceback follows:\n" + traceback.format_exc())
        _cold_start(call, settings, namespace, name, f"unexpected error: {type(e).__name__}: {e}", fail, started,
                    request)
    seconds = round(time.monotonic() - started, 3)
    logs.runtime_log(call, "info", f"restored {call.container_id} from snapshot {namespace}/{name} "
                                   f"({result.entry_ident}) in {seconds}s")
    logs.event(settings.event_log, EventKind.RESTORED, container=call.container_id, namespace=namespace,
               snapshot=name, entry=result.entry_ident, seconds=seconds, stages=result.stages)
    if settings.pod_log_notice:
        logs.pod_notice(f"restored from snapshot {name} in {seconds}s")
    sys.exit(wait_forwarding(result.attached) if result.attached else 0)


def _cold_start(call: RuncCall, settings: Settings, namespace: str, name: str, reason: str,
                fail: bool, started: float, request: ann.Request | None) -> NoReturn:
    level = "error" if fail else "warning"
    verdict = f"not started ({ann.FALLBACK}: fail)" if fail else "cold start"
    logs.runtime_log(call, level, f"{call.container_id}: snapshot {namespace}/{name} not restored, {verdict}: {reason}")
    logs.event(settings.event_log, EventKind.RESTORE_REFUSED if fail else EventKind.COLD_START,
               container=call.container_id, namespace=namespace, snapshot=name, reason=reason,
               seconds=round(time.monotonic() - started, 3))
    if settings.pod_log_notice:
        logs.pod_notice(f"{verdict}: {reason}")
    if fail:
        sys.exit(1)
    if request is not None and request.capture is ann.Capture.ON_READY:
        from runtime.engine import on_ready
        on_ready.spawn(on_ready.Job(call.root, str(call.container_id), namespace, request.snapshot,
                                    request.ready_file, request.ready_http,
                                    request.snapshot_ref if request.push is ann.Push.ON_CAPTURE else None))
    os.execvp(settings.runtime, [settings.runtime, *call.argv])
