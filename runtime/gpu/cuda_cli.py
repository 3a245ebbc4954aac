"""`cuda-checkpoint`: the command CRIU's CUDA plugin runs, on rewarm's binding of the driver API.

Speaks the plugin's protocol (`-h` lists `--action`; `--get-state` prints running / locked /
checkpointed / failed; `--get-restore-tid` prints a thread id) and adds `--toggle` and
`--device-map OLD=NEW,...`. CRIU's plugin passes no device map, so `restore` also reads one from
$REWARM_CUDA_DEVICE_MAP, which rewarm-runc sets when a container lands on other GPUs.
"""
from __future__ import annotations

import argparse
import os
import sys
import time

from runtime.gpu.driver import Driver, ProcessState
from runtime.model import cuda_env
from runtime.model.errors import CudaError


def parse_device_map(text: str) -> dict[str, str]:
    pairs = {}
    for item in filter(None, (p.strip() for p in text.split(","))):
        old, sep, new = item.partition("=")
        if not sep or not old or not new:
            raise ValueError(f"bad device map entry {item!r}: expected OLD_UUID=NEW_UUID")
        pairs[old] = new
    return pairs


def format_device_map(pairs: dict[str, str]) -> str:
    return ",".join(f"{old}={new}" for old, new in pairs.items())


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="cuda-checkpoint", description="Checkpoint and restore the CUDA state of a process.")
    p.add_argument("--pid", type=int, help="process to act on")
    what = p.add_mutually_exclusive_group(required=True)
    what.add_argument("--action", choices=["lock", "checkpoint", "restore", "unlock"], help="one step of the sequence")
    what.add_argument("--get-state", action="store_true", help="print running, locked, checkpointed or failed")
    what.add_argument("--get-restore-tid", action="store_true", help="print the thread id that performs restore")
    what.add_argument("--toggle", action="store_true", help="running -> checkpointed, or checkpointed -> running")
    p.add_argument("--timeout", type=int, help="lock timeout in ms (default $REWARM_CUDA_LOCK_TIMEOUT_MS or none)")
    p.add_argument("--device-map", help="restore onto other GPUs: OLD_UUID=NEW_UUID,... (default $REWARM_CUDA_DEVICE_MAP)")
    return p


def run(a: argparse.Namespace) -> str:
    timeout = a.timeout if a.timeout is not None else int(os.environ.get(cuda_env.LOCK_TIMEOUT_MS, "0"))
    device_map = parse_device_map(a.device_map if a.device_map is not None else os.environ.get(cuda_env.DEVICE_MAP, ""))
    driver = Driver()
    pid = a.pid
    if a.get_state:
        return driver.state(pid).name.lower()
    if a.get_restore_tid:
        return str(driver.restore_thread_id(pid))
    if a.toggle:
        if driver.state(pid) == ProcessState.RUNNING:
            driver.lock(pid, timeout)
            driver.checkpoint(pid)
        else:
            driver.restore(pid, device_map)
            driver.unlock(pid)
        return ""
    step = {"lock": lambda: driver.lock(pid, timeout), "checkpoint": lambda: driver.checkpoint(pid),
            "restore": lambda: driver.restore(pid, device_map), "unlock": lambda: driver.unlock(pid)}
    started = time.monotonic()
    step[a.action]()
    if os.environ.get(cuda_env.TIMING_LOG):
        with open(os.environ[cuda_env.TIMING_LOG], "a") as f:
            f.write(f"{a.action} {pid} {time.monotonic() - started:.3f}\n")
    return ""


def main(argv: list[str] | None = None) -> None:
    a = parser().parse_args(argv)
    if a.pid is None:
        parser().error("--pid is required")
    try:
        out = run(a)
    except (CudaError, ValueError) as e:
        print(f"cuda-checkpoint: {e}", file=sys.stderr)
        sys.exit(1)
    if out:
        print(out)


if __name__ == "__main__":
    main()
