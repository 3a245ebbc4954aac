"""`cuda-checkpoint`: the command CRIU's CUDA plugin runs, on rewarm's binding of the driver API.

Speaks the plugin's protocol (`-h` lists `--action`; `--get-state` prints running / locked /
checkpointed / failed; `--get-restore-tid` prints a thread id, or -1 for a process without CUDA
state, which the plugin then leaves alone: a failure there would put an error line into every
CRIU log of an engine whose tree has such processes, before the real cause) and adds `--toggle` and
`--device-map OLD=NEW,...`. CRIU's plugin passes no device map, so `restore` also reads one from
$REWARM_CUDA_DEVICE_MAP, which rewarm-runc sets when a container lands on other GPUs.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from typing import Callable, Mapping, NoReturn

from runtime.gpu.driver import Driver, ProcessState
from runtime.model import cuda_env
from runtime.model.errors import CudaError


NO_CUDA = -1   # --get-restore-tid of a process without CUDA state: the plugin's "nothing to do here"


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


class UsageError(ValueError):
    """A bad command line (argparse's errors, raised instead of exiting: the helper serves many)."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise UsageError(f"{self.format_usage().strip()}\n{self.prog}: error: {message}")


def parser() -> argparse.ArgumentParser:
    p = _Parser(prog="cuda-checkpoint", description="Checkpoint and restore the CUDA state of a process.",
                add_help=False)
    p.add_argument("-h", "--help", action="store_true", help="show this help and exit")
    p.add_argument("--pid", type=int, help="process to act on")
    what = p.add_mutually_exclusive_group()
    what.add_argument("--action", choices=["lock", "checkpoint", "restore", "unlock"], help="one step of the sequence")
    what.add_argument("--get-state", action="store_true", help="print running, locked, checkpointed or failed")
    what.add_argument("--get-restore-tid", action="store_true", help="print the thread id that performs restore")
    what.add_argument("--toggle", action="store_true", help="running -> checkpointed, or checkpointed -> running")
    p.add_argument("--timeout", type=int, help="lock timeout in ms (default $REWARM_CUDA_LOCK_TIMEOUT_MS or none)")
    p.add_argument("--device-map", help="restore onto other GPUs: OLD_UUID=NEW_UUID,... (default $REWARM_CUDA_DEVICE_MAP)")
    return p


def run(a: argparse.Namespace, env: Mapping[str, str], loaded: Callable[[], Driver]) -> str:
    """One command: what it prints. `env` holds the REWARM_CUDA_* variables; the driver is asked for
    only after the command line and the environment were found sound."""
    timeout = a.timeout if a.timeout is not None else int(env.get(cuda_env.LOCK_TIMEOUT_MS, "0"))
    device_map = parse_device_map(a.device_map if a.device_map is not None else env.get(cuda_env.DEVICE_MAP, ""))
    driver = loaded()
    pid = a.pid
    if a.get_state or a.get_restore_tid:
        started = time.monotonic()
        if a.get_state:
            out = driver.state(pid).name.lower()
        else:
            tid = driver.restore_thread_id(pid)
            out = str(NO_CUDA if tid is None else tid)
        log_timing(env, "get-state" if a.get_state else "get-restore-tid", pid, time.monotonic() - started)
        return out
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
    log_timing(env, a.action, pid, time.monotonic() - started)
    return ""


def log_timing(env: Mapping[str, str], what: str, pid: int, seconds: float) -> None:
    """One line per step into the restore's timing log: the engine splits its stages with them."""
    if env.get(cuda_env.TIMING_LOG):
        with open(env[cuda_env.TIMING_LOG], "a") as f:
            f.write(f"{what} {pid} {seconds:.3f}\n")


def execute(argv: list[str], env: Mapping[str, str], driver: Callable[[], Driver]) -> tuple[int, str, str]:
    """(exit code, stdout, stderr) of one command line. `driver` gives the loaded driver; it is
    asked for only when a command needs it (help and usage errors do not)."""
    try:
        a = parser().parse_args(argv)
        if a.help:
            return 0, parser().format_help(), ""
        if a.pid is None or not (a.action or a.get_state or a.get_restore_tid or a.toggle):
            parser().error("--pid and one of --action, --get-state, --get-restore-tid, --toggle are required")
    except UsageError as e:
        return 2, "", f"{e}\n"
    try:
        out = run(a, env, driver)
    except (CudaError, ValueError) as e:
        return 1, "", f"cuda-checkpoint: {e}\n"
    return 0, f"{out}\n" if out else "", ""


def main(argv: list[str] | None = None) -> None:
    """The command run directly (no resident helper): the driver is loaded for this one call."""
    def loaded() -> Driver:
        started = time.monotonic()
        driver = Driver()
        log_timing(os.environ, "driver-init", os.getpid(), time.monotonic() - started)
        return driver
    code, out, err = execute(sys.argv[1:] if argv is None else argv, os.environ, loaded)
    sys.stdout.write(out)
    sys.stderr.write(err)
    sys.exit(code)


if __name__ == "__main__":
    main()
