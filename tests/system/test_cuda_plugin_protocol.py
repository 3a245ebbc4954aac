"""CRIU's real CUDA plugin talking to rewarm's cuda-checkpoint about real processes, on any machine:
the driver underneath is a stand-in (tests/system/stand_ins/libcuda.c, the seam rewarm reaches the
driver through), forced on with CRIU's own fault switch for GPU-less machines.

A serving engine's tree holds processes without CUDA state beside the ones that use the GPU (vLLM's
API server and EngineCore, plus a resource tracker or compile workers): the plugin asks about each,
and rewarm's answer for the ones without CUDA must be "nothing to do", not an error."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

from runtime.gpu import plugin_env
from runtime.gpu import helper

HERE = os.path.dirname(os.path.abspath(__file__))
CRIU_FORCE_CUDA_PLUGIN = "138"    # CRIU's FI_PLUGIN_CUDA_FORCE_ENABLE: the plugin runs without /proc/driver/nvidia
# A process with a thread of its own (the stand-in names its last thread the CUDA restore thread).
SLEEPER = "import threading, time; threading.Thread(target=time.sleep, args=(600,), daemon=True).start(); time.sleep(600)"
# A "CUDA" parent whose child (exec'd with another environment) has no CUDA state.
TREE = ("import os, subprocess, sys, threading, time\n"
        "env = {k: v for k, v in os.environ.items() if k != 'STAND_IN_CUDA'}\n"
        f"child = subprocess.Popen([sys.executable, '-c', {SLEEPER!r}], env=env)\n"
        "threading.Thread(target=time.sleep, args=(600,), daemon=True).start()\n"
        "print(child.pid, flush=True)\n"
        "time.sleep(600)\n")


@pytest.fixture
def stand_in(tmp_path):
    """The stand-in driver built into a dir of its own, and the environment that puts it first."""
    lib = tmp_path / "lib"
    lib.mkdir()
    subprocess.run(["cc", "-Wall", "-shared", "-fPIC", "-o", str(lib / "libcuda.so.1"),
                    os.path.join(HERE, "stand_ins", "libcuda.c")], check=True)
    state = tmp_path / "state"
    state.mkdir()
    return {"LD_LIBRARY_PATH": str(lib), "STAND_IN_CUDA_DIR": str(state)}


@pytest.fixture
def libexec(node):
    assert os.access(plugin_env.CUDA_CLIENT, os.X_OK), "packaging/install-node.sh builds the client"
    helper.stop()   # the client then runs the Python command itself, in this test's environment
    yield plugin_env.libexec_dir(node)
    helper.stop()


def spawn(code: str, **env: str) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-c", code], env={**os.environ, **env}, stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, start_new_session=True)


def with_threads(*pids: int, count: int = 2, timeout: float = 30) -> None:
    """Wait until each process runs `count` threads (its sleeping thread is up)."""
    deadline = time.monotonic() + timeout
    while any(len(os.listdir(f"/proc/{pid}/task")) < count for pid in pids):
        assert time.monotonic() < deadline, "the processes' threads never came up"
        time.sleep(0.01)


def calls(stand_in: dict[str, str]) -> list[str]:
    path = os.path.join(stand_in["STAND_IN_CUDA_DIR"], "calls")
    return open(path).read().split("\n")[:-1] if os.path.exists(path) else []


def errors(criu_log: str) -> list[str]:
    """CRIU's error lines, but the one it prints where raising RLIMIT_NOFILE is not allowed."""
    return [line for line in criu_log.splitlines() if "Error" in line and "RLIMIT_NOFILE" not in line]


def kill(*pids: int) -> None:
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def test_the_client_answers_nothing_to_do_for_a_process_without_cuda(libexec, stand_in):
    plain, gpu = spawn(SLEEPER), spawn(SLEEPER, STAND_IN_CUDA="1")
    env = {**os.environ, **stand_in}
    try:
        with_threads(plain.pid, gpu.pid)
        for command in ("cuda-checkpoint", "cuda-checkpoint-direct"):   # the C client, and the Python command
            run = [os.path.join(libexec, command), "--get-restore-tid", "--pid"]
            none = subprocess.run([*run, str(plain.pid)], capture_output=True, text=True, env=env)
            assert (none.returncode, none.stdout, none.stderr) == (0, "-1\n", ""), command
            some = subprocess.run([*run, str(gpu.pid)], capture_output=True, text=True, env=env)
            threads = sorted(int(t) for t in os.listdir(f"/proc/{gpu.pid}/task"))
            assert some.returncode == 0 and int(some.stdout) == threads[-1] != gpu.pid, (command, some)
            state = subprocess.run([os.path.join(libexec, command), "--get-state", "--pid", str(plain.pid)],
                                   capture_output=True, text=True, env=env)
            assert state.returncode == 1 and "CUDA_ERROR_NOT_INITIALIZED" in state.stderr   # a state it has not
    finally:
        kill(plain.pid, gpu.pid)


def test_criu_checkpoints_and_restores_a_tree_with_and_without_cuda_through_the_plugin(node, libexec, stand_in,
                                                                                       tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    root = spawn(TREE, STAND_IN_CUDA="1")
    assert root.stdout is not None
    child = int(root.stdout.readline())
    with_threads(root.pid, child)
    env = {**os.environ, **stand_in, "CRIU_FAULT": CRIU_FORCE_CUDA_PLUGIN,
           "PATH": libexec + os.pathsep + os.environ["PATH"]}
    criu_args = [node.criu, "-D", str(images), "-L", node.criu_plugin_dir, "-v4"]
    try:
        dump = subprocess.run([*criu_args, "dump", "-t", str(root.pid), "-o", "dump.log"], env=env,
                              capture_output=True, text=True, timeout=120)
        log = (images / "dump.log").read_text()
        assert dump.returncode == 0, log[-3000:]
        assert errors(log) == []
        assert f"No need to checkpoint devices on pid {child}" in log      # the plugin's "nothing to do"
        assert calls(stand_in) == [f"lock {root.pid}", f"checkpoint {root.pid}"]
        root.wait(10)   # the dump ended the tree (no --leave-running); until its child is reaped
        deadline = time.monotonic() + 10   # too, that zombie holds the session id, which is root's pid
        while os.path.exists(f"/proc/{child}") and time.monotonic() < deadline:
            time.sleep(0.02)

        restore = subprocess.run([*criu_args, "restore", "-d", "-o", "restore.log"], env=env, capture_output=True,
                                 text=True, timeout=120)
        log = (images / "restore.log").read_text()
        assert restore.returncode == 0, log[-3000:]
        assert errors(log) == []
        assert calls(stand_in)[2:] == [f"restore {root.pid}", f"unlock {root.pid}"]
        for pid in (root.pid, child):   # the whole tree runs again, under its own pids
            assert open(f"/proc/{pid}/stat").read().rpartition(")")[2].split()[0] in "SR"
    finally:
        kill(child, root.pid)
