"""The restore pipeline, as named steps over one context:

    refuse_terminal -> refuse_existing_container -> find_candidates -> pick_fitting_entry
    -> verify_files -> lay_rootfs_diff -> lay_dev_shm -> prepare_network -> restore_process
    -> resume_worker

The cheap checks come first (no subprocess runs before the store has a candidate). A step raises
NotRestorable (nothing was changed) or RestoreFailed (the runtime ran and failed); the cleanups
that steps register run only when a later step fails, in reverse order.
"""
from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import time
from dataclasses import dataclass, field
from typing import Callable, Iterator

from runtime.container import cgroups, criu, mounts, netlock
from runtime.netns import netns_setup, worker_hooks
from runtime.observe import logs
from runtime.snapshot import dev_shm, page_cache, reload_files, rootfs_diff, store
from runtime.snapshot.store import Entry, Store
from runtime.host.files import owned_dir, read_json, remove_tree, write_json
from runtime.container.spec_file import SpecFile
from runtime.container.runc import RestoreFrom, Runc, errors_since, restore_argv, run_bounded, start_attached
from runtime.engine.wanted import Wanted
from runtime.gpu import plugin_env
from runtime.front.names import RESTORED_MARKER
from runtime.front.runc_argv import RuncCall
from runtime.model import fingerprint, layout, oci_spec
from runtime.model.annotations import Request
from runtime.model.errors import (GpuMismatch, NotRestorable, RestoreFailed, SnapshotDamaged, UnsafeRootfsDiff,
                                  WorkerHookFailed)
from runtime.model.events import ReasonCode
from runtime.model.oci_spec import Spec
from runtime.model.settings import Settings, Verify

RESTORE_LOG_COPY = "rewarm-restore.log"   # CRIU's restore log, kept beside runc's state of the container


class Stages:
    """Seconds per named stage, for the event log and the benchmarks."""

    def __init__(self, before: dict[str, float] | None = None) -> None:
        self.times: dict[str, float] = dict(before or {})   # the create's own, before the restore began

    @contextlib.contextmanager
    def __call__(self, name: str) -> Iterator[None]:
        t = time.monotonic()
        try:
            yield
        finally:
            self.times[name] = round(self.times.get(name, 0.0) + time.monotonic() - t, 3)


@dataclass(kw_only=True)
class Restore:
    """Everything the steps share. `held` keeps the store's read lock until the restore ends;
    `on_failure` holds the undo of what was changed so far."""
    call: RuncCall
    settings: Settings
    spec_file: SpecFile        # the container's config.json, written once before runc restores it
    want: Wanted               # the create's request, namespace and fingerprint (worked out once)
    store: Store
    runc: Runc
    held: contextlib.ExitStack
    on_failure: contextlib.ExitStack
    stages: Stages = field(default_factory=Stages)
    candidates: list[Entry] = field(default_factory=list)
    entry: Entry | None = None
    work: str = ""
    attached: subprocess.Popen[bytes] | None = None   # `run` in the foreground: the runc that waits
    addresses_added: list[str] = field(default_factory=list)
    started: float = field(default_factory=time.monotonic)
    deadline: float = float("inf")   # the create's (create_timeout_s): a restore never outlasts it

    def seconds_left(self, cap: float) -> float:
        """What is left of restore_timeout_s, which bounds the whole restore (the runtime's restore
        and the worker's resume hook together), and of the create's deadline; at most `cap`."""
        now = time.monotonic()
        return max(0.0, min(cap, self.started + self.settings.restore_timeout_s - now, self.deadline - now))

    @property
    def spec(self) -> Spec:
        return self.spec_file.spec

    @property
    def request(self) -> Request:
        return self.want.request

    @property
    def namespace(self) -> str:
        return self.want.namespace

    @property
    def detach(self) -> bool:
        """`create` restores detached, as `run --detach`; a foreground `run` stays attached."""
        return self.call.verb != "run" or bool(self.call.options.get("--detach") or self.call.options.get("-d"))

    @property
    def what(self) -> str:
        return f"{self.namespace}/{self.request.snapshot}"

    @property
    def container_id(self) -> str:
        return str(self.call.container_id)

    def chosen(self) -> Entry:
        assert self.entry is not None, "a step ran before pick_fitting_entry"
        return self.entry


@dataclass(frozen=True)
class Result:
    entry_ident: str
    stages: dict[str, float]
    attached: subprocess.Popen[bytes] | None = None   # for a foreground `run`: wait for it
    addresses_added: tuple[str, ...] = ()            # bound addresses the pod's netns lacked


def _mounts_lacking(entry: Entry, spec: Spec) -> list[str]:
    """The bind mounts of the captured container (its spec.dump) that this one does not have."""
    try:
        captured = oci_spec.parsed(read_json(entry.file(layout.SPEC_DUMP)))
    except (OSError, ValueError):
        return []   # an import without it: CRIU's own check stands
    return sorted(oci_spec.bind_destinations(captured) - oci_spec.bind_destinations(spec))


# --- the steps ---------------------------------------------------------------------------------
def refuse_terminal(r: Restore) -> None:
    if oci_spec.process(r.spec).get("terminal"):
        raise NotRestorable("containers with a terminal are not restored", ReasonCode.UNSUPPORTED)


def refuse_existing_container(r: Restore) -> None:
    if r.runc.exists(r.container_id):   # never clean up what is not ours (runc create refuses it too)
        raise NotRestorable(f"a container {r.container_id} exists already", ReasonCode.CONTAINER_EXISTS)


def find_candidates(r: Restore) -> None:
    """Entries of the pod's namespace (and of shared ones), newest first; no subprocess yet."""
    repaired = r.store.repair_mode()
    if repaired:
        logs.runtime_log(r.call, "warning", repaired)
    r.candidates, broken = r.store.candidates([r.namespace, *r.settings.shared_namespaces], r.request.snapshot)
    if not r.candidates and broken:
        raise NotRestorable(f"snapshot {r.what}: entry {broken[0].ident} is broken: {broken[0].reason}",
                            ReasonCode.SNAPSHOT_DAMAGED)
    if not r.candidates:
        raise NotRestorable(f"no snapshot {r.what} in the store yet", ReasonCode.NO_SNAPSHOT)


def pick_fitting_entry(r: Restore) -> None:
    """The newest entry whose fingerprint equals this container's on this node; its read lock is
    held from here to the end, and it must still be there once the lock is held."""
    here = r.want.fingerprint
    fitting = store.fitting(r.candidates, here)
    if not fitting:
        newest = r.candidates[0].manifest.fingerprint
        raise NotRestorable(f"snapshot {r.what} does not fit this container: "
                            + "; ".join(fingerprint.differences(newest, here)), ReasonCode.NOT_FITTING)
    entry = fitting[0]
    gone = reload_files.missing(entry.manifest.reload_files, r.spec)
    if gone:   # its resume hook would fail after the whole restore
        raise NotRestorable(f"snapshot {r.what}: its worker reads back files this container does not have as "
                            f"captured (same size, under a bind mount): {', '.join(gone[:3])}", ReasonCode.NOT_FITTING)
    lacking = _mounts_lacking(entry, r.spec)
    if lacking:   # CRIU would find no mapping for them, after reading the whole checkpoint
        raise NotRestorable(f"snapshot {r.what}: its container had mounts this one lacks: {', '.join(lacking[:3])} "
                            "(a capture's pod and the pods that restore it need the same volumes)", ReasonCode.NOT_FITTING)
    if entry.manifest.fingerprint.gpu:
        from runtime.gpu import helper
        helper.ensure_running()     # its driver init overlaps the checks and CRIU's memory stage
    r.held.enter_context(r.store.reading(entry.namespace, entry.name))
    if not os.path.isdir(entry.path):
        raise NotRestorable(f"snapshot {r.what} was replaced or removed while this restore began",
                            ReasonCode.SNAPSHOT_CHANGED)
    r.entry = entry
    prefetch_pages(entry, r.settings.prefetch_threads)


def verify_files(r: Restore) -> None:
    store.verify(r.chosen(), deep=r.settings.verify is Verify.SHA256)


def lay_rootfs_diff(r: Restore) -> None:
    entry = r.chosen()
    r.work = layout.work_dir(r.call.root, r.container_id)
    mounts.unmount_under(r.work)
    remove_tree(r.work, layout.WORK_ROOT)
    owned_dir(r.work)   # rewarm-hook poststop leaves a live engine's work dir alone
    r.on_failure.callback(remove_tree, r.work, layout.WORK_ROOT)
    r.on_failure.callback(mounts.unmount_under, r.work)     # a CRIU killed midway leaves its cgroup yard here
    patch = rootfs_diff.apply(oci_spec.rootfs(r.spec, r.call.bundle), entry.file(layout.ROOTFS_DIFF),
                              entry.file(layout.DELETED_FILES), os.path.join(r.work, "backup"))
    r.on_failure.callback(patch.undo)


def lay_dev_shm(r: Restore) -> None:
    """The files the captured pod kept in a /dev/shm bound in from the host (snapshot/dev_shm.py)."""
    if layout.DEV_SHM in r.chosen().manifest.files:
        patch = dev_shm.lay(r.spec, r.chosen().file(layout.DEV_SHM), os.path.join(r.work, "dev-shm-backup"))
        if patch is not None:
            r.on_failure.callback(patch.undo)


def prepare_network(r: Restore) -> None:
    """Loopback up and the snapshot's bound addresses present in the pod's network namespace, before
    CRIU binds its sockets again. A namespace that runc makes itself gets this from rewarm-hook
    prestart during the restore instead (create.py adds the hook only then)."""
    path = oci_spec.netns_path(r.spec)
    if path:
        r.addresses_added = netns_setup.prepare(path, list(r.chosen().manifest.bound_addresses))


def restore_process(r: Restore) -> None:
    """`runc restore` in the caller's place: the restored process becomes the container's init and
    takes over this process's stdio, exactly as `create` hands its stdio to the container."""
    entry = r.chosen()
    tell_prestart(r, entry)
    r.spec_file.flush()   # with rewarm's changes: config.json's one write
    r.on_failure.callback(netlock.release, oci_spec.netns_path(r.spec))   # CRIU killed midway leaves its lock
    r.on_failure.callback(cgroups.kill_container, r.spec)   # and processes runc does not know of
    r.on_failure.callback(r.runc.delete_force, r.container_id)
    pid_file = r.call.pid_file or (None if r.detach else os.path.join(r.work, "restored.pid"))
    argv = restore_argv(r.settings.runtime, r.call.globals, r.container_id, RestoreFrom(
        criu=r.settings.criu, bundle=os.path.abspath(r.call.bundle), images=image_view(entry, r.work), work=r.work,
        detach=r.detach, pid_file=pid_file, no_pivot=r.call.no_pivot))
    env = plugin_env.restore_env(r.settings, entry.manifest.gpu_uuids, r.spec, r.work)
    log = r.call.log
    offset = os.path.getsize(log) if log and os.path.exists(log) else 0
    read_ahead_reload_files(r)
    with r.stages("runtime_restore"):
        if r.detach:
            returncode, _ = run_bounded(argv, env, r.seconds_left(r.settings.restore_timeout_s),
                                        on_lost_criu=lambda: cgroups.kill_container(r.spec))
        else:
            assert pid_file is not None
            r.attached, returncode = start_attached(argv, env, pid_file, r.seconds_left(r.settings.restore_timeout_s))
            returncode = 0 if r.attached else returncode
    if returncode != 0:
        kept = r.store.keep_log("restore", r.container_id, os.path.join(r.work, layout.RESTORE_LOG))
        why = (f"ran past its time (restore_timeout_s {r.settings.restore_timeout_s}s, create_timeout_s "
               f"{r.settings.create_timeout_s}s)" if returncode is None
               else f"failed (exit {returncode})")
        runtime_errors = errors_since(log, offset)
        raise RestoreFailed(f"{r.settings.runtime} restore {why}"
                            + (f": {runtime_errors}" if runtime_errors else "")
                            + (f"; CRIU: {criu.first_error(kept)}" if kept and criu.first_error(kept) else "")
                            + (f"; CRIU's log: {kept}" if kept else ""),
                            code=ReasonCode.TIMEOUT if returncode is None else ReasonCode.RESTORE_FAILED)
    r.stages.times.update(plugin_env.timing_stages(r.work, r.stages.times["runtime_restore"]))


def resume_worker(r: Restore) -> None:
    """The worker's resume hook in the restored container (a failure fails the restore: cold start)."""
    if not r.request.hooks.resume:
        return
    state = r.runc.state(r.container_id)
    if not state or not state.get("pid"):
        raise RestoreFailed(f"restored container {r.container_id} has no state to resume",
                            code=ReasonCode.RESUME_FAILED)
    try:
        answers = worker_hooks.call(int(state["pid"]), r.request.hooks.resume, "resume",
                                    r.seconds_left(r.settings.hook_timeout_s))
    except WorkerHookFailed as e:
        raise RestoreFailed(str(e), code=ReasonCode.RESUME_FAILED) from e
    for a in answers if len(answers) > 1 else ():   # each call of a sequence timed: `resume /wake_up?tags=...`
        key = f"resume {a.call.path}"
        r.stages.times[key] = round(r.stages.times.get(key, 0.0) + a.seconds, 3)


Step = Callable[[Restore], None]
# (stage name for the event log, or None for checks too quick to time; step)
STEPS: tuple[tuple[str | None, Step], ...] = (
    (None, refuse_terminal),
    (None, refuse_existing_container),
    ("find", find_candidates),
    ("fingerprint", pick_fitting_entry),
    ("verify", verify_files),
    ("rootfs", lay_rootfs_diff),
    ("rootfs", lay_dev_shm),
    ("network", prepare_network),
    (None, restore_process),        # times itself: runtime_restore, split into criu and cuda_restore
    ("resume", resume_worker),
)


def restore(call: RuncCall, settings: Settings, spec_file: SpecFile, want: Wanted,
            deadline: float = float("inf"), before: dict[str, float] | None = None) -> Result:
    """`before`: stages the create timed before it called this (its process start, its preparation)."""
    with contextlib.ExitStack() as held, contextlib.ExitStack() as on_failure:
        r = Restore(call=call, settings=settings, spec_file=spec_file, want=want,
                    store=Store(settings.store), runc=Runc(settings.runtime, call.root), held=held,
                    on_failure=on_failure, deadline=deadline, stages=Stages(before))
        for stage, step in STEPS:
            with r.stages(stage) if stage else contextlib.nullcontext(), _not_here():
                step(r)
        on_failure.pop_all()
        entry = r.chosen()
        _mark_restored(r, entry)
        store.touch_used(entry)      # under the read lock: a concurrent gc or commit sees it whole
    return Result(entry.ident, r.stages.times, r.attached, tuple(r.addresses_added))


# What the layers below find that means this snapshot cannot be restored into this container: the
# engine's decision, a cold start that says why.
NOT_HERE = (SnapshotDamaged, UnsafeRootfsDiff, GpuMismatch)


@contextlib.contextmanager
def _not_here() -> Iterator[None]:
    try:
        yield
    except NOT_HERE as e:
        raise NotRestorable(str(e), e.reason_code) from e


# --- helpers of the steps -----------------------------------------------------------------------
def prefetch_pages(entry: Entry, threads: int) -> None:
    """Have the kernel read CRIU's page images ahead of CRIU, several ranges at once, in the
    background: CRIU reads its images one after another."""
    if threads > 0:
        images = os.path.realpath(entry.file(layout.CHECKPOINT_DIR))   # the opener refuses links on the way
        page_cache.prefetch_in_background(
            [os.path.join(images, n) for n in sorted(os.listdir(images)) if n.startswith("pages-")], threads)


def read_ahead_reload_files(r: Restore) -> None:
    """From CRIU's start, read the files the worker will read back in its resume hook (as this
    container mounts them, of the size the capture saw, in name order: a model's shards are loaded
    in that order) into the page cache, at most half of the memory available. With a cold page
    cache the disk otherwise idles while CRIU reads slower than it can and while the CUDA restore
    runs; started any earlier it would take the disk from the rootfs diff."""
    captured = r.chosen().manifest.reload_files
    if r.settings.read_ahead and captured:
        files = sorted(reload_files.on_this_node(captured, r.spec))
        stop = page_cache.read_ahead_in_background(files, page_cache.memory_available() // 2)
        r.held.callback(stop.set)   # the restore's end, whichever way: the worker reads the rest itself


def image_view(entry: Entry, work: str) -> str:
    """A private directory of links to the entry's CRIU images: CRIU writes stats-restore into
    its image directory, and committed entries must never change. The links are relative: CRIU
    opens some images after it entered the container's root, where an absolute path means
    something else."""
    view = os.path.join(work, "images")
    os.makedirs(view, exist_ok=True)
    prefix = layout.CHECKPOINT_DIR + "/"
    for rel in entry.manifest.files:   # only what the manifest lists and verify checked
        if rel.startswith(prefix) and "/" not in rel[len(prefix):]:
            os.symlink(os.path.relpath(entry.file(rel), view), os.path.join(view, rel[len(prefix):]))
    return view


def tell_prestart(r: Restore, entry: Entry) -> None:
    """What rewarm-hook prestart does during the restore, decided here: where runc makes the
    container's network namespace itself (prepare_network could not), the snapshot's bound addresses
    to add in it."""
    if oci_spec.runtime_makes_netns(r.spec):   # (never the host's: hostNetwork)
        write_json(os.path.join(r.work, layout.PRESTART), {"namespace": entry.namespace, "snapshot": entry.name,
                                                            "bound_addresses": list(entry.manifest.bound_addresses)})


def _mark_restored(r: Restore, entry: Entry) -> None:
    """Mark the container as restored (so `start` is a no-op) and keep CRIU's log beside runc's state."""
    state_dir = os.path.join(r.call.root, r.container_id)
    with contextlib.suppress(OSError):
        shutil.copy(os.path.join(r.work, layout.RESTORE_LOG), os.path.join(state_dir, RESTORE_LOG_COPY))
    write_json(os.path.join(state_dir, RESTORED_MARKER), {
        "snapshot": entry.name, "namespace": entry.namespace, "entry": entry.ident, "stages": r.stages.times})
    remove_tree(r.work, layout.WORK_ROOT)
