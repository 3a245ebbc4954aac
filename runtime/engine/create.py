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
from dataclasses import dataclass, field
from typing import Any, NoReturn

from runtime.container import criu
from runtime.host import procfs, settings_file
from runtime.observe import logs
from runtime.container.spec_file import SpecFile
from runtime.container.runc import wait_forwarding
from runtime.front.names import ANNOTATION_PREFIX
from runtime.front.real_runtime import real_runtime
from runtime.front.runc_argv import RuncCall
from runtime.model import annotations as ann
from runtime.model import oci_spec, seccomp
from runtime.model.errors import ClientError, RewarmError, SettingsError, code_of
from runtime.model.events import EventKind, ReasonCode
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


class ImageDigest:
    """_image_digest() in a forked child, begun first thing: importing grpc and asking containerd
    (~150 ms on a 2-core node) then overlaps the engine's own imports and checks on another core."""

    def __init__(self, call: RuncCall):
        self.pid, self.fd = 0, -1
        if not os.environ.get("TTRPC_ADDRESS"):
            return   # not under containerd: no digest to ask for
        read_end, write_end = os.pipe()
        pid = os.fork()
        if pid == 0:   # the child: one line, "=DIGEST" or "!why"
            os.close(read_end)
            try:
                line = "=" + (_image_digest(call) or "")
            except BaseException as e:   # reported to the parent, which decides
                line = f"!{type(e).__name__}: {e}"
            os.write(write_end, line.encode(errors="replace"))
            os._exit(0)
        os.close(write_end)
        self.pid, self.fd = pid, read_end

    def result(self, timeout: float = 30.0) -> str | None:
        if not self.pid:
            return None
        import select
        ready: list[int] = []
        try:
            ready, _, _ = select.select([self.fd], [], [], timeout)
            data = b""
            while ready and (chunk := os.read(self.fd, 65536)):
                data += chunk
        finally:
            os.close(self.fd)
            if not ready:
                os.kill(self.pid, 9)
            os.waitpid(self.pid, 0)
            self.pid = 0
        text = data.decode(errors="replace")
        if not text.startswith("="):
            raise ClientError(f"the image's digest from containerd: {text[1:] or 'no answer'}")
        return text[1:] or None

    def close(self) -> None:
        """Not wanted any more (a cold start): end and reap the child."""
        if self.pid:
            os.kill(self.pid, 9)
            os.close(self.fd)
            os.waitpid(self.pid, 0)
            self.pid = 0


def prepare_spec(call: RuncCall, settings: Settings, f: SpecFile, digest: str | None) -> None:
    """Point the container (its config.json, `f`) at rewarm's CRIU options, for its restore now
    and its capture later, name its image by digest (the fingerprint of both sides then holds the
    digest), and keep io_uring, which CRIU cannot capture, out of it (model/seccomp.py). In memory:
    the file is written once, before the runtime runs."""
    if settings.block_io_uring and not seccomp.blocks_io_uring(f.spec):
        f.spec = seccomp.with_io_uring_blocked(f.spec)
    f.spec.setdefault("annotations", {})[criu.RUNC_CONFIG_ANNOTATION] = criu.ensure_config(settings)
    if digest:
        f.spec["annotations"][ann.IMAGE_DIGEST_KEY] = digest
    if settings.inject_hooks:
        _add_hooks(f.spec, call)


def hook_binary() -> str | None:
    """rewarm-hook beside this engine (same installation), else the one on PATH."""
    beside = os.path.join(os.path.dirname(os.path.abspath(sys.argv[0])), "rewarm-hook")
    return beside if os.access(beside, os.X_OK) else shutil.which("rewarm-hook")


def _add_hooks(spec: Spec, call: RuncCall) -> None:
    """rewarm-hook poststop after the container's own hooks (once), and prestart where runc makes
    the network namespace: a named one (a pod's) the restore prepares itself (restore.prepare_network),
    which saves the hook's process start on a restore's path, and the host's (hostNetwork) is never
    touched. runc gives hooks an empty environment:
    name rewarm's config and the runtime root (where the work dir lives)."""
    hook = hook_binary()
    if not hook:
        logs.runtime_log(call, "warning", "rewarm-hook not found: the container runs without rewarm's hooks")
        return
    env = [f"PATH={os.environ.get('PATH', '/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin')}",
           f"REWARM_RUNTIME_ROOT={call.root}"]
    env += [f"{k}={os.environ[k]}" for k in ("REWARM_CONFIG", "PYTHONPATH") if os.environ.get(k)]
    hooks: dict[str, list[oci_spec.Hook]] = spec.setdefault("hooks", {})
    for stage in ("prestart", "poststop") if oci_spec.runtime_makes_netns(spec) else ("poststop",):
        entries = hooks.setdefault(stage, [])
        if not any(h.get("path") == hook and (h.get("args") or [])[1:2] == [stage] for h in entries):
            entries.append({"path": hook, "args": ["rewarm-hook", stage], "env": env, "timeout": HOOK_TIMEOUT_S})


def _settings() -> tuple[Settings, str | None]:
    """The node's settings, or the defaults and why not. Even then the real runtime is the one the
    sh front door runs for every other verb (the first "runtime" of the file), never a second guess."""
    try:
        return settings_file.load(), None
    except SettingsError as e:
        return Settings(runtime=real_runtime()), str(e)


@dataclass
class Attempt:
    """One annotated create, as far as it got: what its outcome is reported with."""
    call: RuncCall
    settings: Settings
    annotations: dict[str, str]
    started: float = field(default_factory=time.monotonic)
    # From the runtime's process start to here: the interpreter, the imports, the config file.
    startup: float = field(default_factory=lambda: procfs.seconds_alive(os.getpid()) or 0.0)
    namespace: str = "default"
    request: ann.Request | None = None
    prepared: SpecFile | None = None    # config.json with rewarm's changes made, in memory
    reads_gpus_ahead: bool = False      # NVML's inventory is being read on another thread

    @property
    def name(self) -> str:
        return self.annotations.get(ann.SNAPSHOT, "")

    @property
    def deadline(self) -> float:
        """When the pull on miss, the restore and its resume hook must be done (create_timeout_s),
        leaving the cold start its time inside kubelet's runtime-request-timeout."""
        return self.started + self.settings.create_timeout_s

    def stages_so_far(self) -> dict[str, float]:
        """The create's own stages before the restore: its process start, and what it worked out
        since (the image's digest, the annotations, config.json's changes)."""
        return {"startup": round(self.startup, 3), "prepare": round(time.monotonic() - self.started, 3)}

    @property
    def fail(self) -> bool:
        return ann.wants_fail(self.annotations)

    def event(self, kind: EventKind, **fields: Any) -> None:
        logs.event(self.settings.event_log, kind, container=self.call.container_id, namespace=self.namespace,
                   **ann.pod_fields(self.annotations), snapshot=self.name,
                   seconds=round(time.monotonic() - self.started, 3), **fields)


def _spec_file(call: RuncCall) -> SpecFile | None:
    """The bundle's config.json; None where it is broken (the real runtime says so in its own words)."""
    try:
        return SpecFile(call.bundle)
    except (OSError, ValueError):
        return None


def create(call: RuncCall) -> NoReturn:
    settings, config_error = _settings()
    f = _spec_file(call)
    annotations = oci_spec.annotations_of(f.spec) if f else {}
    # Not rewarm's after all (the door saw rewarm.dev/ elsewhere in config.json, an env value, say),
    # a pod's sandbox, which pod annotations reach too, or another container of the pod than the one
    # rewarm.dev/container names (a proxy beside the worker): never restored.
    if f is None or not any(k.startswith(ANNOTATION_PREFIX) for k in annotations) or ann.is_sandbox(annotations) \
            or not ann.is_for_this_container(annotations):
        os.execvp(settings.runtime, [settings.runtime, *call.argv])
    a = Attempt(call, settings, annotations)
    logs.about(container=str(call.container_id), **ann.pod_fields(annotations))   # its pull's events name the pod too
    digest = ImageDigest(call)
    # After the fork above (a child must not inherit NVML half begun); a later fork or exec waits for
    # it: _cold_start through nvml.settle, pull on miss through its fingerprint.
    if oci_spec.uses_gpu(f.spec):
        from runtime.gpu import nvml
        nvml.read_ahead()
        a.reads_gpus_ahead = True
    try:
        if config_error:
            raise SettingsError(config_error)
        a.namespace = ann.namespace_of(annotations)
        a.request = ann.parse(annotations, oci_spec.process(f.spec))
        from runtime.engine import restore, wanted   # (their imports overlap the digest's child)
        prepare_spec(call, settings, f, digest.result())
        a.prepared = f
        want = wanted.of(f.spec, settings, a.request, a.namespace)
        before = a.stages_so_far()
        if a.request.snapshot_ref:   # rewarm.dev/snapshot-ref: pull on a miss, within pull_timeout_s
            from runtime.engine import pull
            t = time.monotonic()
            pull.on_miss(settings, want, pull.Pod(str(call.container_id), call.root), a.deadline)
            before["pull"] = round(time.monotonic() - t, 3)
        result = restore.restore(call, settings, f, want, a.deadline, before)
    except (RewarmError, OSError, ValueError) as e:
        digest.close()
        _cold_start(a, str(e), code_of(e))
    except Exception as e:  # a bug must not stop the pod: say where, then cold start
        digest.close()
        logs.runtime_log(call, "error", "unexpected error, traceback follows:\n" + traceback.format_exc())
        _cold_start(a, f"unexpected error: {type(e).__name__}: {e}", ReasonCode.UNEXPECTED)
    seconds = round(time.monotonic() - a.started, 3)
    logs.runtime_log(call, "info", f"restored {call.container_id} from snapshot {a.namespace}/{a.name} "
                                   f"({result.entry_ident}) in {seconds}s")
    advice = a.request.hooks.advice if a.request else ""
    a.event(EventKind.RESTORED, entry=result.entry_ident, stages=result.stages,
            **({"addresses_added": list(result.addresses_added)} if result.addresses_added else {}),
            **({"advice": advice} if advice else {}))
    if settings.pod_log_notice:
        logs.pod_notice(f"restored from snapshot {a.name} in {seconds}s")
    sys.exit(wait_forwarding(result.attached) if result.attached else 0)


def _cold_start(a: Attempt, reason: str, code: ReasonCode) -> NoReturn:
    """`reason` for people (the logs, the pod's Event), `code` for the metrics (events.ReasonCode)."""
    verdict = f"not started ({ann.FALLBACK}: fail)" if a.fail else "cold start"
    logs.runtime_log(a.call, "error" if a.fail else "warning",
                     f"{a.call.container_id}: snapshot {a.namespace}/{a.name} not restored, {verdict}: {reason}")
    # Set where an on-ready capture follows this cold start: its event says so (the node agent keeps
    # the pod out of its Services until the capture is over), and the watcher is started.
    watched = a.request if a.request is not None and a.request.capture.when_ready and not a.fail else None
    a.event(EventKind.RESTORE_REFUSED if a.fail else EventKind.COLD_START, reason=reason, code=code.value,
            **({"capture": watched.capture.value} if watched else {}))
    if a.settings.pod_log_notice:
        logs.pod_notice(f"{verdict}: {reason}")
    if a.reads_gpus_ahead:   # an NVML read begun ahead ends before a fork or an exec
        from runtime.gpu import nvml
        nvml.settle()
    if a.fail:
        sys.exit(1)
    if watched is not None:
        from runtime.engine import on_ready
        on_ready.spawn(on_ready.Job(runtime_root=a.call.root, container_id=str(a.call.container_id),
                                    namespace=a.namespace, name=watched.snapshot, ready_file=watched.ready_file,
                                    ready_http=watched.ready_http,
                                    push_to=watched.snapshot_ref if watched.push is ann.Push.ON_CAPTURE else None,
                                    capture=watched.capture.value, pod=ann.pod_fields(a.annotations)))
    if a.prepared is not None:   # the cold start runs with rewarm's changes too (its capture needs them)
        try:
            a.prepared.flush()
        except OSError as e:
            logs.runtime_log(a.call, "warning", f"{a.call.container_id}: config.json not prepared for a capture: {e}")
    os.execvp(a.settings.runtime, [a.settings.runtime, *a.call.argv])
