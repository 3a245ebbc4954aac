"""The restore pipeline: find -> check compatibility -> verify -> lay rootfs diff -> runtime restore.

Each step is a function that raises NotRestorable (nothing was changed) or RestoreFailed (the
runtime ran and failed); the cleanups registered on the way run only when a later step fails.
"""
from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from runtime import criu_options, fingerprint, gpu_inventory, layout, rootfs_diff, store, worker_hooks
from runtime.annotations import ENTRY_KEY, ThawRequest
from runtime.errors import NotRestorable, RestoreFailed
from runtime.runc_argv import RuncCall
from runtime.settings import Settings
from runtime.shim import RESTORED_MARKER

CUDA_TIMING = "cuda-timing.log"
# runc's global flags that the restore must repeat so it lands where the caller looks.
FORWARDED_GLOBALS = ("--root", "--log", "--log-format", "--systemd-cgroup", "--debug", "--rootless")


@dataclass
class Result:
    entry_ident: str
    stages: dict[str, float] = field(default_factory=dict)


class _Stages:
    def __init__(self) -> None:
        self.times: dict[str, float] = {}

    @contextlib.contextmanager
    def __call__(self, name: str):  # type: ignore[no-untyped-def]
        t = time.monotonic()
        yield
        self.times[name] = round(time.monotonic() - t, 3)


def work_dir_for(runtime_root: str, container_id: str) -> str:
    return os.path.join("/run/thaw/work", runtime_root.strip("/").replace("/", "_"), container_id)


def pick_entry(entries: list[store.Entry], here: fingerprint.Fingerprint, what: str) -> store.Entry:
    if not entries:
        raise NotRestorable(f"no snapshot {what} in the store yet")
    for entry in entries:
        if not fingerprint.differences(fingerprint.Fingerprint.from_dict(entry.manifest["fingerprint"]), here):
            return entry
    newest = fingerprint.Fingerprint.from_dict(entries[0].manifest["fingerprint"])
    raise NotRestorable(f"snapshot {what} does not fit this container: "
                        + "; ".join(fingerprint.differences(newest, here)))


def rootfs_of(call: RuncCall, spec: dict[str, Any]) -> str:
    path = (spec.get("root") or {}).get("path") or "rootfs"
    return path if os.path.isabs(path) else os.path.join(os.path.abspath(call.bundle), path)


PREFETCH_CHUNK = 64 << 20


def prefetch_pages(entry: store.Entry, threads: int) -> None:
    """Have the kernel read CRIU's page images ahead of CRIU, several ranges at once, in the
    background. CRIU reads them one after another, so with a cold page cache a restore runs at one
    reader's disk bandwidth; ranges already cached cost nothing."""
    images = os.path.join(entry.path, layout.CHECKPOINT_DIR)
    ranges = [(os.path.join(images, name), offset) for name in sorted(os.listdir(images)) if name.startswith("pages-")
              for offset in range(0, os.path.getsize(os.path.join(images, name)), PREFETCH_CHUNK)]

    def advise(item: tuple[str, int]) -> None:
        fd = os.open(item[0], os.O_RDONLY)
        try:
            os.posix_fadvise(fd, item[1], PREFETCH_CHUNK, os.POSIX_FADV_WILLNEED)
        finally:
            os.close(fd)

    def run() -> None:
        with ThreadPoolExecutor(threads) as pool:
            list(pool.map(advise, ranges))
    if threads > 0 and ranges:
        threading.Thread(target=run, daemon=True, name="thaw-prefetch").start()


def image_view(entry: store.Entry, work: str) -> str:
    """A private directory of links to the entry's CRIU images: CRIU writes stats-restore into
    its image directory, and committed entries must never change. The links are relative: CRIU
    opens some images after it entered the container's root, where an absolute path means
    something else."""
    view = os.path.join(work, "images")
    os.makedirs(view, exist_ok=True)
    src = os.path.join(entry.path, layout.CHECKPOINT_DIR)
    for name in os.listdir(src):
        os.symlink(os.path.relpath(os.path.join(src, name), view), os.path.join(view, name))
    return view


def runtime_restore(call: RuncCall, settings: Settings, images: str, work: str) -> list[str]:
    argv = [settings.runtime]
    for flag in FORWARDED_GLOBALS:
        value = call.globals.get(flag)
        if value is True:
            argv.append(flag)
        elif value:
            argv += [flag, str(value)]
    argv += ["--criu", settings.criu, "restore", "--detach", "--bundle", os.path.abspath(call.bundle),
             "--image-path", images, "--work-path", work, "--file-locks", "--ext-unix-sk"]
    if call.options.get("--pid-file"):
        argv += ["--pid-file", str(call.options["--pid-file"])]
    if call.options.get("--no-pivot"):
        argv.append("--no-pivot")
    return argv + [str(call.container_id)]


def _new_log_errors(log_path: str | None, offset: int) -> str:
    if not log_path:
        return ""
    try:
        with open(log_path, encoding="utf-8", errors="replace") as f:
            f.seek(offset)
            lines = f.read().splitlines()
    except OSError:
        return ""
    return " | ".join(line for line in lines if "error" in line)[-800:]


def run_restore(call: RuncCall, settings: Settings, argv: list[str], work: str, env: dict[str, str]) -> None:
    """Run the runtime's restore with our own stdio: the restored process takes it over, exactly
    as `create` hands its stdio to the container (the pod's log pipes)."""
    log = call.globals.get("--log") if isinstance(call.globals.get("--log"), str) else None
    offset = os.path.getsize(log) if log and os.path.exists(log) else 0
    try:
        returncode = subprocess.run(argv, timeout=settings.restore_timeout_s, env=env).returncode
    except subprocess.TimeoutExpired:
        raise RestoreFailed(f"{settings.runtime} restore took longer than {settings.restore_timeout_s}s") from None
    if returncode != 0:
        criu = criu_options.log_errors(os.path.join(work, layout.RESTORE_LOG))
        runtime = _new_log_errors(log, offset)
        raise RestoreFailed(f"{settings.runtime} restore failed (exit {returncode})"
                            + (f": {runtime}" if runtime else "") + (f"; CRIU: {criu}" if criu else ""))


def _force_delete(call: RuncCall, settings: Settings) -> None:
    subprocess.run([settings.runtime, "--root", call.root, "delete", "--force", str(call.container_id)],
                   stdin=subprocess.DEVNULL, capture_output=True, timeout=60)


def gpu_env(entry: store.Entry, spec: dict[str, Any], work: str) -> dict[str, str]:
    """For a GPU snapshot: the old->new GPU UUID pairs for CUDA restore, and where to log its time."""
    recorded = entry.manifest.get("gpu_uuids")
    if not recorded:
        return {}
    from runtime import gpu
    from runtime.cuda_cli import DEVICE_MAP_ENV, TIMING_LOG_ENV, format_device_map
    pairs = gpu.device_map(recorded, gpu.uuids_of_spec(spec))
    return {DEVICE_MAP_ENV: format_device_map(pairs), TIMING_LOG_ENV: os.path.join(work, CUDA_TIMING)}


def cuda_split(work: str, total: float) -> dict[str, float]:
    """Split the runtime's restore into CRIU (memory, files, ...) and CUDA restore + unlock."""
    try:
        with open(os.path.join(work, CUDA_TIMING)) as f:
            cuda = sum(float(line.split()[2]) for line in f if line.split()[0] in ("restore", "unlock"))
    except (OSError, IndexError, ValueError):
        return {}
    return {"cuda_restore": round(cuda, 3), "criu": round(total - cuda, 3)}


def name_entry(call: RuncCall, spec: dict[str, Any], entry_path: str | None) -> None:
    """Write (or, with None, remove) the entry being restored into config.json's annotations."""
    annotations = spec.setdefault("annotations", {})
    if entry_path is None and ENTRY_KEY not in annotations:
        return
    if entry_path is None:
        del annotations[ENTRY_KEY]
    else:
        annotations[ENTRY_KEY] = entry_path
    path = os.path.join(call.bundle, "config.json")
    layout.write_json(path, spec, mode=os.stat(path).st_mode & 0o777)


def resume_restored(call: RuncCall, settings: Settings, url: str) -> None:
    """The worker's resume hook in the restored container (a failure fails the restore: cold start)."""
    state = subprocess.run([settings.runtime, "--root", call.root, "state", str(call.container_id)],
                           capture_output=True, text=True, timeout=30)
    try:
        pid = int(json.loads(state.stdout)["pid"])
        worker_hooks.post(pid, url, "resume", settings.hook_timeout_s)
    except (ValueError, KeyError) as e:
        raise RestoreFailed(f"restored container has no state to resume: {state.stderr.strip() or e}") from None
    except worker_hooks.HookFailed as e:
        raise RestoreFailed(str(e)) from None


def restore(call: RuncCall, settings: Settings, spec: dict[str, Any], request: ThawRequest,
            namespace: str) -> Result:
    if (spec.get("process") or {}).get("terminal"):
        raise NotRestorable("containers with a terminal are not restored")
    st = store.Store(settings.store)
    stage = _Stages()
    what = f"{namespace}/{request.snapshot}"
    with stage("find"):
        here = fingerprint.of_container(spec, env_ignore=settings.env_ignore, criu=settings.criu,
                                        runtime=settings.runtime, gpu=gpu_inventory.fingerprint_of_spec(spec))
        entries = st.entries(namespace, request.snapshot)
        for shared in settings.shared_namespaces:
            if shared != namespace:
                entries += st.entries(shared, request.snapshot)
    work = work_dir_for(call.root, str(call.container_id))
    with st.reading(namespace, request.snapshot), contextlib.ExitStack() as on_failure:
        if os.path.exists(os.path.join(call.root, str(call.container_id), "state.json")):
            raise NotRestorable(f"a container {call.container_id} exists already")  # never clean up what is not ours
        entry = pick_entry(entries, here, what)
        prefetch_pages(entry, settings.prefetch_threads)
        name_entry(call, spec, entry.path)    # for thaw-hook prestart, which runc runs during the restore
        on_failure.callback(name_entry, call, spec, None)
        with stage("verify"):
            store.verify(entry, deep=settings.verify == "sha256")
        shutil.rmtree(work, ignore_errors=True)
        os.makedirs(work, mode=0o700)
        on_failure.callback(shutil.rmtree, work, ignore_errors=True)
        with stage("rootfs"):
            patch = rootfs_diff.apply(rootfs_of(call, spec), os.path.join(entry.path, layout.ROOTFS_DIFF),
                                      os.path.join(entry.path, layout.DELETED_FILES), os.path.join(work, "backup"))
        on_failure.callback(patch.undo)
        on_failure.callback(_force_delete, call, settings)
        env = criu_options.runtime_env(settings, **gpu_env(entry, spec, work))
        with stage("runtime_restore"):
            run_restore(call, settings, runtime_restore(call, settings, image_view(entry, work), work), work, env)
        stage.times.update(cuda_split(work, stage.times["runtime_restore"]))
        if request.resume_http:
            with stage("resume"):
                resume_restored(call, settings, request.resume_http)
        on_failure.pop_all()
    _finish(call, entry, work, stage.times)
    store.touch_used(entry)
    return Result(entry.ident, stage.times)


def _finish(call: RuncCall, entry: store.Entry, work: str, stages: dict[str, float]) -> None:
    """Mark the container as restored (so `start` is a no-op) and keep CRIU's log beside runc's state."""
    state_dir = os.path.join(call.root, str(call.container_id))
    with contextlib.suppress(OSError):
        shutil.copy(os.path.join(work, layout.RESTORE_LOG), os.path.join(state_dir, "thaw-restore.log"))
    layout.write_json(os.path.join(state_dir, RESTORED_MARKER), {
        "snapshot": entry.name, "namespace": entry.namespace, "entry": entry.ident, "stages": stages})
    shutil.rmtree(work, ignore_errors=True)
