"""The capture pipeline: checkpoint a running container into a new store entry, as named steps over
one context:

    fingerprint_source -> return_a_fitting_entry -> refuse_what_criu_cannot_dump -> note_gpus_and_sockets
    -> checkpoint (quiesce hook, space check, dump, resume hook) -> keep_dump_log -> write_rootfs_diff
    -> write_dev_shm -> describe -> commit, then stop_source unless it is to keep running

The entry is built in a private staging directory and published with one rename at the very end,
so a capture that dies at any point leaves nothing that a restore would use. The checkpoint always
leaves the worker running, and a worker that is not to keep running is stopped only after the
commit: whatever fails (CRIU, a full disk while the rootfs diff is written, the manifest), the warm
worker survives, brought back to running (its GPU state too), and the failure is an event.
"""
from __future__ import annotations

import dataclasses
import os
import shutil
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable

from runtime.container import criu, netlock, open_files, sockets, spec_file
from runtime.netns import worker_hooks
from runtime.observe import logs
from runtime.snapshot import dev_shm, reload_files, rootfs_diff, store
from runtime.host.files import write_json
from runtime.container.runc import Runc, run_bounded
from runtime.engine import fingerprinting, warm
from runtime.gpu import plugin_env
from runtime.model import annotations as ann
from runtime.model import clock, layout, oci_spec
from runtime.model.errors import (CaptureFailed, CudaError, InvalidInput, RewarmError, StoreError, WorkerHookFailed,
                                  code_of)
from runtime.model.events import EventKind
from runtime.model.fingerprint import Fingerprint
from runtime.model.manifest import CaptureInfo, Manifest, ReloadFile, RootfsInfo
from runtime.model.names import validate_name, validate_namespace
from runtime.model.oci_spec import Spec
from runtime.model.settings import Settings

if TYPE_CHECKING:
    from runtime.clients.containerd import Containerd

@dataclass(frozen=True)
class Source:
    """The container to capture, as the real runtime reports it."""
    runtime_root: str
    container_id: str
    bundle: str
    pid: int
    spec: Spec

    @property
    def rootfs(self) -> str:
        return oci_spec.rootfs(self.spec, self.bundle)


@dataclass(kw_only=True)
class Capture:
    """Everything the steps share."""
    settings: Settings
    source: Source
    namespace: str
    name: str
    leave_running: bool
    staging: str
    containerd: "Containerd | None" = None
    hooks: ann.WorkerHooks = ann.WorkerHooks()
    into: store.Store | None = None          # the store the entry goes into
    skip_if_present: bool = False
    entry: store.Entry | None = None          # the committed entry (or one that fitted already)
    started: float = field(default_factory=time.monotonic)
    fingerprint: Fingerprint | None = None
    gpu_facts: dict[str, Any] = field(default_factory=dict)
    bound: list[str] = field(default_factory=list)
    checkpoint_seconds: float = 0.0
    rootfs: RootfsInfo = RootfsInfo()
    reload: tuple[ReloadFile, ...] = ()       # files the worker reads back (its quiesce hook named them)
    reload_left_out: list[str] = field(default_factory=list)
    stages: dict[str, float] = field(default_factory=dict)   # seconds per step, for the captured event
    listed: list[int] | None = None           # the container's processes (see pids)

    @property
    def images(self) -> str:
        return os.path.join(self.staging, layout.CHECKPOINT_DIR)

    @property
    def work(self) -> str:
        return os.path.join(self.staging, "work")

    @property
    def runc(self) -> Runc:
        return Runc(self.settings.runtime, self.source.runtime_root)

    def fp(self) -> Fingerprint:
        assert self.fingerprint is not None, "a step ran before fingerprint_source"
        return self.fingerprint

    def pids(self) -> list[int]:
        """The container's processes, listed once (`runc ps`): the steps before the dump see the same ones."""
        if self.listed is None:
            self.listed = self.runc.pids(self.source.container_id) or [self.source.pid]
        return self.listed

    def seconds_left(self, cap: float | None = None) -> float:
        """What is left of capture_timeout_s, which bounds the quiesce hook and the checkpoint
        together (the resume hook after it has its own hook_timeout_s: the worker must be woken)."""
        left = max(0.0, self.started + self.settings.capture_timeout_s - time.monotonic())
        return left if cap is None else min(cap, left)


def _now_rfc3339() -> str:
    return clock.rfc3339()


def find_source(settings: Settings, runtime_root: str, container_id: str) -> Source:
    state = Runc(settings.runtime, runtime_root).state(container_id)
    if state is None:
        raise CaptureFailed(f"container {container_id} not found under {runtime_root}")
    if state.get("status") != "running":
        raise CaptureFailed(f"container {container_id} is {state.get('status')}, not running")
    try:
        spec = spec_file.read(state["bundle"])
    except (OSError, ValueError) as e:
        raise CaptureFailed(f"container {container_id}: its bundle's config.json is unreadable: {e}") from e
    return Source(runtime_root, container_id, state["bundle"], int(state["pid"]), spec)


# --- the steps ---------------------------------------------------------------------------------
def fingerprint_source(c: Capture) -> None:
    c.fingerprint = fingerprinting.of_container(c.source.spec, c.settings)


SPACE_MARGIN = 1.1          # the estimate counts resident memory; CRIU's images add a little
SPACE_SPARE = 64 << 20


def check_space(c: Capture) -> None:
    """Refuse before the dump when the store clearly cannot hold it: the container's resident
    memory, the GPU memory of its processes and its rootfs changes (an estimate, not a promise:
    a full disk later still fails cleanly, it only costs a dump)."""
    pids = c.pids()
    need = sum(_resident_bytes(pid) for pid in pids) + rootfs_diff.upper_bytes(c.source.rootfs)
    if c.fp().gpu:
        from runtime.gpu import nvml
        need += nvml.gpu_memory_of(pids)
    need = int(need * SPACE_MARGIN) + SPACE_SPARE
    st = os.statvfs(c.staging)
    free = st.f_bavail * st.f_frsize
    if free < need:
        raise CaptureFailed(f"not enough space in the store for this capture: about {need / 2**30:.2f} GiB "
                            f"needed, {free / 2**30:.2f} GiB free under {c.settings.store}")


def _resident_bytes(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/statm", encoding="ascii") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0


def refuse_what_criu_cannot_dump(c: Capture) -> None:
    """Fail before the worker is touched where CRIU would fail midway: an io_uring instance (a
    container started by rewarm-runc has io_uring refused, see model/seccomp.py; one started
    elsewhere, or with block_io_uring off, may hold one)."""
    holders = open_files.io_uring_holders(c.pids())
    if holders:
        raise CaptureFailed(f"process {', '.join(holders[:5])} holds an io_uring instance, which CRIU cannot "
                            "checkpoint; start the container through rewarm-runc with block_io_uring on (the "
                            "default), or have its libraries use epoll (libuv and uvloop take a ring unasked)")


def note_gpus_and_sockets(c: Capture) -> None:
    """Before the checkpoint, while the process surely runs: its GPUs (device order, which of its
    processes hold contexts) and the addresses its sockets are bound to."""
    if c.fp().gpu:
        from runtime.gpu import nvml  # pynvml: only for GPU containers
        c.gpu_facts = {"gpu_uuids": tuple(nvml.uuids_of_spec(c.source.spec)),
                       "gpu_processes": {k: tuple(v) for k, v in
                                         nvml.processes_on_gpus(c.pids()).items()}}
    c.bound = sockets.bound_addresses(c.source.pid)


def checkpoint(c: Capture) -> None:
    """The space check and the checkpoint, between the worker's quiesce and resume hooks where its
    annotations (or its engine's preset) name them."""
    worker = c.hooks
    t = time.monotonic()
    try:
        answers = worker_hooks.call(c.source.pid, worker.quiesce, "quiesce", c.seconds_left(c.settings.hook_timeout_s))
        c.reload, c.reload_left_out = reload_files.resolve(c.source.spec, [a.body for a in answers],
                                                           worker.reads_back)
        check_space(c)   # after the quiesce: a worker gives back its KV reserve there
        if c.containerd is not None:
            _containerd_checkpoint(c, c.containerd)
        else:
            _runc_checkpoint(c)
    except WorkerHookFailed as e:
        raise CaptureFailed(str(e)) from e
    finally:
        try:   # the worker runs on after the checkpoint in every case (see stop_source)
            worker_hooks.call(c.source.pid, worker.resume, "resume", c.settings.hook_timeout_s)
        except WorkerHookFailed as e:
            logs.event(c.settings.event_log, EventKind.HOOK_FAILED, container=c.source.container_id,
                       reason=str(e))
    c.checkpoint_seconds = time.monotonic() - t


def keep_dump_log(c: Capture) -> None:
    shutil.move(os.path.join(c.work, layout.DUMP_LOG), os.path.join(c.staging, layout.DUMP_LOG))
    shutil.rmtree(c.work)


def write_rootfs_diff(c: Capture) -> None:
    tar_path, deleted_path = os.path.join(c.staging, layout.ROOTFS_DIFF), os.path.join(c.staging, layout.DELETED_FILES)
    upper = rootfs_diff.overlay_upper(c.source.rootfs)
    size, deleted = rootfs_diff.write(upper, tar_path, deleted_path)   # no overlay: an empty diff
    c.rootfs = RootfsInfo("overlay" if upper else "none", size, deleted)


def write_dev_shm(c: Capture) -> None:
    dev_shm.write(c.source.spec, os.path.join(c.staging, layout.DEV_SHM))


def describe(c: Capture) -> None:
    """spec.dump, config.dump and stats-dump: the files CRI-O's and Podman's tools read."""
    write_json(os.path.join(c.staging, layout.SPEC_DUMP), c.source.spec)
    write_json(os.path.join(c.staging, layout.CONFIG_DUMP), {
        "id": c.source.container_id, "name": c.name, "rootfsImageName": c.fp().image,
        "createdTime": _now_rfc3339(), "checkpointedTime": _now_rfc3339()})
    write_json(os.path.join(c.staging, layout.STATS_DUMP), vars(_capture_info(c)))


def stop_source(c: Capture) -> None:
    """After the commit, for a capture that is not to leave the worker running: kill it (and, at
    the runc level, delete it, as `runc checkpoint` without --leave-running would have)."""
    c.runc.run("kill", c.source.container_id, "KILL")
    if c.containerd is not None:
        return   # containerd's shim sees the exit and owns the container
    deadline = time.monotonic() + 10
    while (c.runc.state(c.source.container_id) or {}).get("status") not in ("stopped", None):
        if time.monotonic() > deadline:
            break
        time.sleep(0.05)
    c.runc.run("delete", "--force", c.source.container_id)


Step = Callable[[Capture], None]
class _FitsAlready(Exception):
    """return_a_fitting_entry found one: the pipeline ends there (not a failure)."""


def return_a_fitting_entry(c: Capture) -> None:
    """With skip_if_present (an on-ready capture, bake): an entry of this fingerprint ends it."""
    if c.skip_if_present and c.into is not None:
        present = [e for e in c.into.entries(c.namespace, c.name) if e.manifest.fingerprint_id == c.fp().ident()]
        if present:
            c.entry = present[0]
            raise _FitsAlready


def commit(c: Capture) -> None:
    """Checksum, write the manifest and publish the entry with the store's one rename."""
    assert c.into is not None
    c.entry = c.into.commit(c.staging, _manifest(c))


# The pipeline, in order (the module's docstring names the same steps); stop_source runs after it,
# outside the store's capture lock, unless the worker is to keep running.
STEPS: tuple[Step, ...] = (fingerprint_source, return_a_fitting_entry, refuse_what_criu_cannot_dump,
                           note_gpus_and_sockets, checkpoint, keep_dump_log, write_rootfs_diff, write_dev_shm,
                           describe, commit)


# --- the pipeline -------------------------------------------------------------------------------
@dataclass(frozen=True)
class Request:
    """What to capture, and how. With `containerd`, the checkpoint goes through containerd's task
    API and the image is named by the digest containerd has for it; with `skip_if_present`, an
    entry that already fits the container is returned instead."""
    runtime_root: str
    container_id: str
    name: str
    namespace: str | None = None       # None: the pod's, from its annotations
    leave_running: bool = False
    skip_if_present: bool = False
    containerd: "Containerd | None" = None
    image_digest: str = ""             # the image's digest as containerd has it ("": from the spec's annotations)


def capture(settings: Settings, runtime_root: str, container_id: str, name: str, namespace: str | None = None,
            leave_running: bool = False) -> store.Entry:
    """Capture a container into (namespace, name)."""
    return run(settings, Request(runtime_root, container_id, name, namespace, leave_running))


def run(settings: Settings, request: Request) -> store.Entry:
    r = request
    container_id, name, namespace, leave_running, containerd = (r.container_id, r.name, r.namespace,
                                                                 r.leave_running, r.containerd)
    validate_name(name)
    src = find_source(settings, r.runtime_root, container_id)
    if r.image_digest:
        src = _with_image_digest(src, r.image_digest)
    namespace = validate_namespace(namespace or ann.namespace_of(oci_spec.annotations_of(src.spec)))
    st = store.Store(settings.store).ensure()
    criu.ensure_config(settings)
    where = {"container": container_id, "namespace": namespace, "snapshot": name,
             **ann.pod_fields(oci_spec.annotations_of(src.spec))}
    try:
        hooks = _hooks_of(src)
        with st.capturing(namespace, name), st.staging() as staging:
            c = Capture(settings=settings, source=src, namespace=namespace, name=name, leave_running=leave_running,
                        staging=staging, containerd=containerd, hooks=hooks, into=st, skip_if_present=r.skip_if_present)
            for step in STEPS:
                t = time.monotonic()
                step(c)
                c.stages[step.__name__] = round(time.monotonic() - t, 3)
    except _FitsAlready:
        assert c.entry is not None
        return c.entry
    except StoreError as e:   # another capture of this name runs: not a failure of this worker
        logs.event(settings.event_log, EventKind.CAPTURE_SKIPPED, **where, reason=str(e))
        raise
    except (RewarmError, OSError) as e:
        failure = e if isinstance(e, CaptureFailed) else CaptureFailed(f"capture failed after the checkpoint: {e}")
        if not isinstance(e, CaptureFailed):
            revived = revive_source(settings, src)
            failure = CaptureFailed(f"{failure}" + (f"; {revived}" if revived else ""))
        logs.event(settings.event_log, EventKind.CAPTURE_FAILED, **where, reason=str(failure), code=code_of(e).value)
        raise failure from e
    entry = c.entry
    assert entry is not None
    left_out = {"reload_files_left_out": c.reload_left_out[:20]} if c.reload_left_out else {}
    advice = {"advice": c.hooks.advice} if c.hooks.advice else {}
    logs.event(settings.event_log, EventKind.CAPTURED, **where, entry=entry.ident,
               seconds=round(time.monotonic() - c.started, 3), bytes=entry.size(), stages=c.stages,
               reload_bytes=sum(f.size for f in c.reload), **left_out, **advice)
    if not leave_running:
        stop_source(c)
    warm.after(settings, "capture", entry)
    return entry


def _hooks_of(src: Source) -> ann.WorkerHooks:
    try:
        return ann.worker_hooks(oci_spec.annotations_of(src.spec), oci_spec.process(src.spec))
    except InvalidInput as e:
        raise CaptureFailed(f"container {src.container_id}: {e}") from e


def _capture_info(c: Capture) -> CaptureInfo:
    checkpoint_bytes = sum(os.path.getsize(os.path.join(c.images, f)) for f in os.listdir(c.images))
    return CaptureInfo(round(time.monotonic() - c.started, 3), round(c.checkpoint_seconds, 3), c.leave_running,
                       checkpoint_bytes, c.namespace)


def _manifest(c: Capture) -> Manifest:
    fp = c.fp()
    return Manifest(
        namespace=c.namespace, name=c.name, created=_now_rfc3339(), fingerprint=fp, fingerprint_id=fp.ident(),
        source={"container_id": c.source.container_id, "bundle": c.source.bundle,
                "runtime_root": c.source.runtime_root},
        rootfs=c.rootfs, capture=_capture_info(c), bound_addresses=tuple(c.bound), reload_files=c.reload,
        **c.gpu_facts,
        annotations={"org.criu.checkpoint.engine": "rewarm", "org.criu.checkpoint.criu-version": fp.criu,
                     "org.criu.checkpoint.kernel": fp.kernel, "org.criu.checkpoint.arch": fp.arch})


def _with_image_digest(src: Source, digest: str) -> Source:
    annotations = {**oci_spec.annotations_of(src.spec), ann.IMAGE_DIGEST_KEY: digest}
    return dataclasses.replace(src, spec={**src.spec, "annotations": annotations})


# --- checkpoint back ends -----------------------------------------------------------------------
def _runc_checkpoint(c: Capture) -> None:
    tcp_established = criu.RUNC_CONFIG_ANNOTATION not in oci_spec.annotations_of(c.source.spec)
    argv = c.runc.checkpoint_argv(c.source.container_id, criu=c.settings.criu, images=c.images, work=c.work,
                                  leave_running=True,   # stopped after the commit, if at all
                                  tcp_established=tcp_established)  # no tcp-close from rewarm's CRIU config
    returncode, err = run_bounded(argv, plugin_env.checkpoint_env(c.settings), c.seconds_left(), capture=True)
    if returncode != 0:
        why = (f"the capture ran past capture_timeout_s ({c.settings.capture_timeout_s}s)" if returncode is None else
               f"{c.settings.runtime} checkpoint failed: {err.strip()[-500:]}")
        _fail_and_revive(c, why)


def _containerd_checkpoint(c: Capture, containerd: "Containerd") -> None:
    """The checkpoint bridge: containerd's Tasks.Checkpoint (its runc shim runs `runc checkpoint`,
    through rewarm-runc where the container runs on rewarm's handler) writes the CRIU images."""
    try:
        containerd.checkpoint(c.source.container_id, c.images, c.work, exit=False,   # stopped after the commit
                              timeout=c.seconds_left())
    except RewarmError as e:
        _fail_and_revive(c, str(e))


def _fail_and_revive(c: Capture, why: str) -> None:
    kept = store.Store(c.settings.store).keep_log("dump", c.source.container_id, os.path.join(c.work, layout.DUMP_LOG))
    cause = criu.first_error(kept) if kept else ""
    revived = revive_source(c.settings, c.source)
    raise CaptureFailed(why + (f"; CRIU: {cause}" if cause else "") + (f"; CRIU's log: {kept}" if kept else "")
                        + (f"; {revived}" if revived else ""))


def revive_source(settings: Settings, src: Source) -> str:
    """After a failed capture the source must keep serving: bring its CUDA state back to running
    (CRIU may have failed after the GPU was locked or checkpointed) and resume it if it is still paused."""
    notes = []
    runc = Runc(settings.runtime, src.runtime_root)
    if oci_spec.uses_gpu(src.spec):
        from runtime.gpu.driver import NOT_INITIALIZED, Driver, ProcessState
        try:
            driver = Driver()
            for pid in runc.pids(src.container_id) or [src.pid]:
                try:
                    if driver.state(pid) != ProcessState.RUNNING:
                        notes.append(f"pid {pid} CUDA state back to {driver.bring_back(pid).name.lower()}")
                except CudaError as e:
                    if e.code != NOT_INITIALIZED:
                        notes.append(f"pid {pid}: {e}")
        except CudaError as e:
            notes.append(str(e))
    state = runc.state(src.container_id)
    if state and state.get("status") == "paused":
        runc.resume(src.container_id)
        notes.append("container resumed")
    lifted = netlock.release(oci_spec.netns_path(src.spec) or f"/proc/{src.pid}/ns/net")   # a CRIU killed midway
    if lifted:
        notes.append(f"CRIU's network lock lifted ({', '.join(lifted)})")
    return ", ".join(notes)
