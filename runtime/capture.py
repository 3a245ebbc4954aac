"""Capture: checkpoint a running container into a new store entry.

The entry is built in a private staging directory (CRIU images, rootfs diff, spec, fingerprint,
checksums) and published with one rename at the very end, so a capture that dies at any point
leaves nothing that a restore would use.
"""
from __future__ import annotations

import dataclasses
import json
import os
import shutil
import subprocess
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from runtime import annotations as ann
from runtime import criu_options, fingerprint, gpu_inventory, layout, rootfs_diff, runtime_log, sockets, store, worker_hooks
from runtime.errors import CaptureFailed
from runtime.settings import Settings

if TYPE_CHECKING:
    from runtime.containerd_api import Containerd


@dataclass(frozen=True)
class Source:
    """The container to capture, as the real runtime reports it."""
    runtime_root: str
    container_id: str
    bundle: str
    pid: int
    spec: dict[str, Any]

    @property
    def rootfs(self) -> str:
        path = (self.spec.get("root") or {}).get("path") or "rootfs"
        return path if os.path.isabs(path) else os.path.join(self.bundle, path)


def _now_rfc3339() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def find_source(settings: Settings, runtime_root: str, container_id: str) -> Source:
    proc = subprocess.run([settings.runtime, "--root", runtime_root, "state", container_id],
                          capture_output=True, text=True, timeout=30)
    if proc.returncode != 0:
        raise CaptureFailed(f"container {container_id} not found under {runtime_root}: {proc.stderr.strip()}")
    state = json.loads(proc.stdout)
    if state.get("status") != "running":
        raise CaptureFailed(f"container {container_id} is {state.get('status')}, not running")
    spec = layout.read_json(os.path.join(state["bundle"], "config.json"))
    return Source(runtime_root, container_id, state["bundle"], int(state["pid"]), spec)


def checkpoint_argv(settings: Settings, src: Source, images: str, work: str, leave_running: bool) -> list[str]:
    argv = [settings.runtime, "--root", src.runtime_root, "--criu", settings.criu, "checkpoint",
            "--image-path", images, "--work-path", work, "--file-locks", "--ext-unix-sk"]
    if criu_options.RUNC_CONFIG_ANNOTATION not in (src.spec.get("annotations") or {}):
        argv.append("--tcp-established")  # not created by thaw-runc: no tcp-close from thaw's CRIU config
    if leave_running:
        argv.append("--leave-running")
    return argv + [src.container_id]


def run_checkpoint(settings: Settings, src: Source, argv: list[str], work: str) -> float:
    t = time.monotonic()
    try:
        proc = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, text=True,
                              timeout=settings.capture_timeout_s, env=criu_options.runtime_env(settings))
    except subprocess.TimeoutExpired:
        proc = None
    if proc is None or proc.returncode != 0:
        criu = criu_options.log_errors(os.path.join(work, layout.DUMP_LOG))
        why = (f"checkpoint took longer than {settings.capture_timeout_s}s" if proc is None else
               f"{settings.runtime} checkpoint failed: {proc.stderr.strip()[-500:]}")
        revived = revive_source(settings, src)
        raise CaptureFailed(why + (f"; CRIU: {criu}" if criu else "") + (f"; {revived}" if revived else ""))
    return time.monotonic() - t


def container_pids(settings: Settings, src: Source) -> list[int]:
    proc = subprocess.run([settings.runtime, "--root", src.runtime_root, "ps", "--format", "json", src.container_id],
                          capture_output=True, text=True, timeout=30)
    try:
        return [int(p) for p in json.loads(proc.stdout or "[]")]
    except ValueError:
        return [src.pid]


def revive_source(settings: Settings, src: Source) -> str:
    """After a failed capture the source must keep serving: bring its CUDA state back to running
    (CRIU may have failed after the GPU was locked or checkpointed) and thaw it if still frozen."""
    notes = []
    if gpu_inventory.spec_uses_gpu(src.spec):
        from runtime.cuda_checkpoint import CudaError, Driver, ProcessState
        try:
            driver = Driver()
            for pid in container_pids(settings, src):
                try:
                    if driver.state(pid) != ProcessState.RUNNING:
                        notes.append(f"pid {pid} CUDA state back to {driver.bring_back(pid).name.lower()}")
                except CudaError as e:
                    if e.code != 3:  # CUDA_ERROR_NOT_INITIALIZED: the process does not use CUDA
                        notes.append(f"pid {pid}: {e}")
        except CudaError as e:
            notes.append(str(e))
    state = subprocess.run([settings.runtime, "--root", src.runtime_root, "state", src.container_id],
                           capture_output=True, text=True)
    if state.returncode == 0 and json.loads(state.stdout).get("status") == "paused":
        subprocess.run([settings.runtime, "--root", src.runtime_root, "resume", src.container_id], capture_output=True)
        notes.append("container resumed")
    return ", ".join(notes)


def write_rootfs_diff(src: Source, staging: str) -> dict[str, Any]:
    tar_path = os.path.join(staging, layout.ROOTFS_DIFF)
    deleted_path = os.path.join(staging, layout.DELETED_FILES)
    upper = rootfs_diff.overlay_upper(src.rootfs)
    if upper is None:  # a plain directory rootfs: nothing to diff against, record an empty diff
        size, _ = rootfs_diff.write(None, tar_path, deleted_path)
        return {"kind": "none", "diff_bytes": size, "deleted": 0}
    size, deleted = rootfs_diff.write(upper, tar_path, deleted_path)
    return {"kind": "overlay", "diff_bytes": size, "deleted": deleted}


def _gpu_facts(settings: Settings, src: Source) -> dict[str, Any]:
    """The container's GPUs in its device order, and which of its processes use which GPU."""
    from runtime import gpu  # pynvml: only for GPU containers
    return {"gpu_uuids": gpu.uuids_of_spec(src.spec),
            "gpu_processes": gpu.processes_on_gpus(container_pids(settings, src))}


def run_containerd_checkpoint(settings: Settings, src: Source, containerd: "Containerd", images: str,
                              work: str, leave_running: bool) -> float:
    """The checkpoint bridge: containerd's Tasks.Checkpoint (its runc shim runs `runc checkpoint`,
    through thaw-runc where the container runs on thaw's handler) writes the CRIU images for us."""
    from runtime.containerd_api import ContainerdError
    t = time.monotonic()
    try:
        containerd.checkpoint(src.container_id, images, work, exit=not leave_running,
                              timeout=settings.capture_timeout_s)
    except ContainerdError as e:
        criu = criu_options.log_errors(os.path.join(work, layout.DUMP_LOG))
        revived = revive_source(settings, src)
        raise CaptureFailed(str(e) + (f"; CRIU: {criu}" if criu else "") + (f"; {revived}" if revived else ""))
    return time.monotonic() - t


def checkpoint_quiesced(settings: Settings, src: Source, containerd: "Containerd | None", images: str, work: str,
                       leave_running: bool) -> float:
    """The checkpoint, between the worker's quiesce and resume hooks where its annotations name them."""
    annotations = src.spec.get("annotations") or {}
    quiesce, resume = annotations.get(ann.QUIESCE_HTTP), annotations.get(ann.RESUME_HTTP)
    try:
        if quiesce:
            worker_hooks.post(src.pid, quiesce, "quiesce", settings.hook_timeout_s)
        if containerd is not None:
            return run_containerd_checkpoint(settings, src, containerd, images, work, leave_running)
        return run_checkpoint(settings, src, checkpoint_argv(settings, src, images, work, leave_running), work)
    except worker_hooks.HookFailed as e:
        raise CaptureFailed(str(e)) from None
    finally:
        if resume and leave_running:
            try:
                worker_hooks.post(src.pid, resume, "resume", settings.hook_timeout_s)
            except worker_hooks.HookFailed as e:
                runtime_log.event(settings.event_log, "hook-failed", container=src.container_id, reason=str(e))


def with_image_digest(src: Source, digest: str) -> Source:
    annotations = {**(src.spec.get("annotations") or {}), fingerprint.IMAGE_DIGEST_KEY: digest}
    return dataclasses.replace(src, spec={**src.spec, "annotations": annotations})


def capture(settings: Settings, runtime_root: str, container_id: str, name: str,
            namespace: str | None = None, leave_running: bool = False, skip_if_present: bool = False,
            containerd: "Containerd | None" = None) -> store.Entry:
    """Capture a container into (namespace, name). With `containerd`, the checkpoint goes through
    containerd's task API and the image is named by the digest containerd has for it; with
    `skip_if_present`, an entry that already fits this container is returned instead."""
    ann.validate_name(name)
    src = find_source(settings, runtime_root, container_id)
    if containerd is not None:
        src = with_image_digest(src, containerd.image_digest(containerd.container(container_id).image))
    annotations = src.spec.get("annotations") or {}
    namespace = ann.validate_name(namespace or ann.namespace_of(annotations), "namespace")
    st = store.Store(settings.store).ensure()
    criu_options.ensure_config(settings)
    started = time.monotonic()
    try:
        with st.capturing(namespace, name), st.staging() as staging:
            fp = fingerprint.of_container(src.spec, env_ignore=settings.env_ignore, criu=settings.criu,
                                          runtime=settings.runtime,
                                          gpu=gpu_inventory.fingerprint_of_spec(src.spec))
            if skip_if_present:
                present = [e for e in st.entries(namespace, name) if e.manifest["fingerprint_id"] == fp.ident()]
                if present:
                    return present[0]
            work = os.path.join(staging, "work")
            images = os.path.join(staging, layout.CHECKPOINT_DIR)
            gpu_facts = _gpu_facts(settings, src) if fp.gpu else {}
            bound = sockets.bound_addresses(src.pid)   # before the checkpoint: the process may stop
            dump_seconds = checkpoint_quiesced(settings, src, containerd, images, work, leave_running)
            shutil.move(os.path.join(work, layout.DUMP_LOG), os.path.join(staging, layout.DUMP_LOG))
            shutil.rmtree(work)
            rootfs = write_rootfs_diff(src, staging)
            checkpoint_bytes = sum(os.path.getsize(os.path.join(images, f)) for f in os.listdir(images))
            layout.write_json(os.path.join(staging, layout.SPEC_DUMP), src.spec)
            layout.write_json(os.path.join(staging, layout.CONFIG_DUMP), {
                "id": src.container_id, "name": name, "rootfsImageName": fp.image,
                "createdTime": _now_rfc3339(), "checkpointedTime": _now_rfc3339()})
            capture_stats = {"seconds": round(time.monotonic() - started, 3), "checkpoint_seconds": round(dump_seconds, 3),
                             "leave_running": leave_running, "checkpoint_bytes": checkpoint_bytes}
            layout.write_json(os.path.join(staging, layout.STATS_DUMP), capture_stats)
            entry = st.commit(staging, {
                "schema_version": 1, "namespace": namespace, "name": name, "created": _now_rfc3339(),
                "fingerprint": fp.__dict__, "fingerprint_id": fp.ident(),
                "source": {"container_id": src.container_id, "bundle": src.bundle, "runtime_root": runtime_root},
                "rootfs": rootfs, "capture": capture_stats, "files": {}, "bound_addresses": bound, **gpu_facts,
                "annotations": {"org.criu.checkpoint.engine": "thaw", "org.criu.checkpoint.criu-version": fp.criu,
                                "org.criu.checkpoint.kernel": fp.kernel, "org.criu.checkpoint.arch": fp.arch},
            })
    except CaptureFailed as e:
        runtime_log.event(settings.event_log, "capture-failed", container=container_id, namespace=namespace,
                          snapshot=name, reason=str(e))
        raise
    runtime_log.event(settings.event_log, "captured", container=container_id, namespace=namespace, snapshot=name,
                      entry=entry.ident, seconds=round(time.monotonic() - started, 3), bytes=entry.size())
    return entry
