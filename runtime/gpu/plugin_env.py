"""What CRIU's CUDA plugin and rewarm's `cuda-checkpoint` (cuda_cli.py) get from a checkpoint or a
restore, and what comes back: the directory put first on CRIU's PATH (where the plugin finds
`cuda-checkpoint`), the old->new GPU pairs, and the timing log that cuda_cli writes one line per
step into, read back as the restore's CUDA stages."""
from __future__ import annotations

import os
import sys

from runtime.container import criu
from runtime.host.files import write_if_changed
from runtime.gpu import cuda_cli
from runtime.model import cuda_env
from runtime.model.oci_spec import Spec
from runtime.model.settings import Settings

CUDA_CLIENT = "/opt/rewarm/bin/rewarm-cuda-checkpoint"   # built by packaging/install-node.sh
TIMING_FILE = "cuda-timing.log"
# cuda_cli's steps and the restore stages they count towards.
STAGES = {"restore": "cuda_restore", "unlock": "cuda_unlock", "get-restore-tid": "cuda_query",
          "get-state": "cuda_query", "driver-init": "cuda_driver_init", "driver-init-wait": "cuda_driver_init"}


def _link(target: str, to: str) -> None:
    if not os.path.islink(target) or os.readlink(target) != to:
        tmp = f"{target}.{os.getpid()}"
        os.symlink(to, tmp)
        os.replace(tmp, target)


def libexec_dir(settings: Settings) -> str:
    """The directory put first on CRIU's PATH: its CUDA plugin runs `cuda-checkpoint` from there.
    rewarm's own is the client of its resident CUDA helper (packaging/cuda-client) where it is
    installed, beside `cuda-checkpoint-direct`, which runs cuda_cli in this interpreter (the
    client's fallback, and its stand-in where it is not installed); or NVIDIA's, as configured."""
    directory = os.path.join(settings.store, "libexec")
    os.makedirs(directory, mode=0o700, exist_ok=True)
    target, direct = os.path.join(directory, "cuda-checkpoint"), os.path.join(directory, "cuda-checkpoint-direct")
    if settings.cuda_checkpoint:
        _link(target, settings.cuda_checkpoint)
        return directory
    package_parent = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(cuda_cli.__file__))))
    write_if_changed(direct, f"#!{sys.executable}\n# rewarm's cuda-checkpoint ({cuda_cli.__name__})\n"
                             f"import sys\nsys.path.insert(0, {package_parent!r})\n"
                             f"from {cuda_cli.__name__} import {cuda_cli.main.__name__}\n"
                             f"{cuda_cli.main.__name__}()\n", mode=0o700)
    _link(target, CUDA_CLIENT if os.access(CUDA_CLIENT, os.X_OK) else direct)
    return directory


def checkpoint_env(settings: Settings) -> dict[str, str]:
    return criu.runtime_env(settings, libexec_dir(settings))


def restore_env(settings: Settings, recorded_uuids: tuple[str, ...], spec: Spec, work: str) -> dict[str, str]:
    """For a GPU snapshot, also the recorded->visible GPU UUID pairs and where to log the time."""
    extra: dict[str, str] = {}
    if recorded_uuids:
        from runtime.gpu import nvml
        pairs = nvml.device_map(list(recorded_uuids), nvml.uuids_of_spec(spec))
        extra = {cuda_env.DEVICE_MAP: cuda_cli.format_device_map(pairs),
                 cuda_env.TIMING_LOG: os.path.join(work, TIMING_FILE)}
    return criu.runtime_env(settings, libexec_dir(settings), **extra)


def timing_stages(work: str, total: float) -> dict[str, float]:
    """Split the runtime's restore (`total` seconds) into CRIU (memory, files, ...) and the CUDA
    steps: driver init (or the wait for the resident helper's), queries, restore (the copy back to
    the GPU), unlock. {} where no CUDA step ran."""
    stages: dict[str, float] = {}
    try:
        with open(os.path.join(work, TIMING_FILE)) as f:
            for line in f:
                step, _, seconds = line.split()
                if step in STAGES:
                    stages[STAGES[step]] = stages.get(STAGES[step], 0.0) + float(seconds)
    except (OSError, ValueError):
        return {}
    if not stages:
        return {}
    cuda = sum(stages.values())
    return {**{k: round(v, 3) for k, v in stages.items()}, "cuda": round(cuda, 3), "criu": round(total - cuda, 3)}
