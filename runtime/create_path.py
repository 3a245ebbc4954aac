"""`create` of a container that carries thaw.dev/ annotations: restore it, or cold start it.

This module decides and reports; `restore` does the work. Whatever happens, the caller gets
either a restored container or the real runtime's own `create` (unless thaw.dev/fallback: fail),
and the reason is written to the runtime log, thaw's event log and the pod's log.
"""
from __future__ import annotations

import os
import shutil
import sys
import time
from typing import NoReturn

from runtime import annotations as ann
from runtime import criu_options, fingerprint, layout, runtime_log
from runtime.errors import ThawError
from runtime import settings as settings_mod
from runtime.runc_argv import RuncCall
from runtime.settings import Settings


def _image_digest(call: RuncCall) -> str | None:
    """Under containerd, the digest of the container's image (containerd's metadata names the image;
    the runc shim's --root ends in the containerd namespace). None elsewhere."""
    if not os.environ.get("TTRPC_ADDRESS"):
        return None  # not started by containerd's runc shim
    from runtime import containerd_api  # grpc: only under containerd
    address = containerd_api.address_from_shim_env()
    if not address:
        return None
    with containerd_api.Containerd(address, os.path.basename(call.root.rstrip("/"))) as containerd:
        return containerd.image_digest(containerd.container(str(call.container_id)).image)


def _prepare_spec(call: RuncCall, settings: Settings) -> dict:
    """Point the container at thaw's CRIU options, for its restore now and its capture later, and
    name its image by digest: the fingerprint of both sides then holds the digest."""
    path = os.path.join(call.bundle, "config.json")
    spec = layout.read_json(path)
    annotations = spec.setdefault("annotations", {})
    wanted = {criu_options.RUNC_CONFIG_ANNOTATION: criu_options.ensure_config(settings)}
    digest = _image_digest(call)
    if digest:
        wanted[fingerprint.IMAGE_DIGEST_KEY] = digest
    hooks_added = settings.inject_hooks and _add_hooks(spec, call)
    if any(annotations.get(k) != v for k, v in wanted.items()) or hooks_added:
        annotations.update(wanted)
        layout.write_json(path, spec, mode=os.stat(path).st_mode & 0o777)
    return spec


def hook_binary() -> str | None:
    """thaw-hook beside this engine (same installation), else the one on PATH."""
    beside = os.path.join(os.path.dirname(os.path.abspath(sys.argv[0])), "thaw-hook")
    return beside if os.access(beside, os.X_OK) else shutil.which("thaw-hook")


def _add_hooks(spec: dict, call: RuncCall) -> bool:
    """thaw-hook prestart and poststop after the container's own hooks (once). runc gives hooks an
    empty environment: name thaw's config and the runtime root (where the work dir lives)."""
    hook = hook_binary()
    if not hook:
        runtime_log.runtime_log(call, "warning", "thaw-hook not found: the container runs without thaw's hooks")
        return False
    env = [f"PATH={os.environ.get('PATH', '/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin')}",
           f"THAW_RUNTIME_ROOT={call.root}"]
    env += [f"{k}={os.environ[k]}" for k in ("THAW_CONFIG", "PYTHONPATH") if os.environ.get(k)]
    hooks = spec.setdefault("hooks", {})
    changed = False
    for stage in ("prestart", "poststop"):
        entries = hooks.setdefault(stage, [])
        if not any(h.get("path") == hook and (h.get("args") or [])[1:2] == [stage] for h in entries):
            entries.append({"path": hook, "args": ["thaw-hook", stage], "env": env, "timeout": 60})
            changed = True
    return changed


def create(call: RuncCall, annotations: dict[str, str]) -> NoReturn:
    try:
        settings, config_error = settings_mod.load(), None
    except settings_mod.SettingsError as e:
        settings, config_error = Settings(), str(e)
    if ann.is_sandbox(annotations):  # pod annotations reach the pause container too: never restore it
        os.execvp(settings.runtime, [settings.runtime, *call.argv])
    started = time.monotonic()
    fail = annotations.get(ann.FALLBACK) == ann.Fallback.FAIL.value
    namespace = ann.namespace_of(annotations)
    name = annotations.get(ann.SNAPSHOT, "")
    request = None
    try:
        if config_error:
            raise ThawError(config_error)
        request = ann.parse(annotations)
        spec = _prepare_spec(call, settings)
        from runtime import restore
        result = restore.restore(call, settings, spec, request, namespace)
    except (ThawError, ann.AnnotationError, OSError, ValueError) as e:
        _cold_start(call, settings, namespace, name, str(e), fail, started, request)
    seconds = round(time.monotonic() - started, 3)
    runtime_log.runtime_log(call, "info", f"restored {call.container_id} from snapshot {namespace}/{name} "
                                          f"({result.entry_ident}) in {seconds}s")
    runtime_log.event(settings.event_log, "restored", container=call.container_id, namespace=namespace,
                      snapshot=name, entry=result.entry_ident, seconds=seconds, stages=result.stages)
    if settings.pod_log_notice:
        runtime_log.pod_notice(f"restored from snapshot {name} in {seconds}s")
    sys.exit(0)


def _cold_start(call: RuncCall, settings: Settings, namespace: str, name: str, reason: str,
                fail: bool, started: float, request: ann.ThawRequest | None) -> NoReturn:
    level = "error" if fail else "warning"
    verdict = "not started (thaw.dev/fallback: fail)" if fail else "cold start"
    runtime_log.runtime_log(call, level, f"{call.container_id}: snapshot {namespace}/{name} not restored, "
                                         f"{verdict}: {reason}")
    runtime_log.event(settings.event_log, "restore-refused" if fail else "cold-start",
                      container=call.container_id, namespace=namespace, snapshot=name, reason=reason,
                      seconds=round(time.monotonic() - started, 3))
    if settings.pod_log_notice:
        runtime_log.pod_notice(f"{verdict}: {reason}")
    if fail:
        sys.exit(1)
    if request is not None and request.capture is ann.Capture.ON_READY:
        from runtime import on_ready
        on_ready.spawn(on_ready.Job(call.root, str(call.container_id), namespace, request.snapshot,
                                    request.ready_file, request.ready_http))
    os.execvp(settings.runtime, [settings.runtime, *call.argv])
