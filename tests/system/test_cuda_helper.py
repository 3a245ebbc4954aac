"""The resident CUDA helper and its C client (the `cuda-checkpoint` CRIU's plugin runs): the command
line and the REWARM_CUDA_* environment go over the socket and the answer comes back as the Python
command would give it; without a helper the client runs the Python command itself. On a machine
without a GPU the driver's absence is the answer (the GPU machine's tests restore through it)."""
from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest

from runtime.gpu import plugin_env
from runtime.gpu import helper

CLIENT = plugin_env.CUDA_CLIENT


@pytest.fixture
def libexec(node):
    """CRIU's view: the libexec dir with `cuda-checkpoint` (the client) and `-direct` (Python)."""
    assert os.access(CLIENT, os.X_OK), "packaging/install-node.sh builds the client"
    return plugin_env.libexec_dir(node)


@pytest.fixture
def running_helper():
    helper.stop()                       # one a restore started earlier, if any
    proc = subprocess.Popen([sys.executable, "-m", "runtime.gpu.helper"])
    deadline = time.monotonic() + 10
    while not helper.running() and time.monotonic() < deadline:
        time.sleep(0.02)
    yield proc
    helper.stop()
    assert proc.wait(10) is not None


def cuda_checkpoint(libexec: str, *args: str, env: dict | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([os.path.join(libexec, "cuda-checkpoint"), *args], capture_output=True, text=True,
                          env={**os.environ, **(env or {})})


def both(libexec: str, *args: str, env: dict | None = None) -> tuple[subprocess.CompletedProcess[str], ...]:
    direct = subprocess.run([os.path.join(libexec, "cuda-checkpoint-direct"), *args], capture_output=True,
                            text=True, env={**os.environ, **(env or {})})
    return cuda_checkpoint(libexec, *args, env=env), direct


def test_the_client_speaks_the_plugins_protocol_through_the_helper(libexec, running_helper, tmp_path):
    assert os.path.realpath(os.path.join(libexec, "cuda-checkpoint")) == CLIENT
    via_helper, direct = both(libexec, "-h")
    assert via_helper.returncode == 0 and "--action" in via_helper.stdout      # CRIU's plugin checks this
    assert (via_helper.returncode, via_helper.stdout) == (direct.returncode, direct.stdout)
    via_helper, direct = both(libexec, "--pid", "1")                         # a usage error
    assert via_helper.returncode == direct.returncode == 2 and via_helper.stderr == direct.stderr
    timing = tmp_path / "timing.log"
    via_helper, direct = both(libexec, "--get-state", "--pid", "1", env={"REWARM_CUDA_TIMING_LOG": str(timing)})
    assert via_helper.returncode == direct.returncode
    if not os.path.exists("/dev/nvidiactl"):
        assert "no CUDA driver" in via_helper.stderr and "no CUDA driver" in direct.stderr
    assert running_helper.poll() is None                                      # it serves on


def test_without_a_helper_the_client_runs_the_python_command(libexec):
    helper.stop()
    assert not helper.running()
    out = cuda_checkpoint(libexec, "-h")
    assert out.returncode == 0 and "--action" in out.stdout and "--get-restore-tid" in out.stdout


def test_without_a_helper_the_client_found_on_path_runs_the_python_command(libexec, tmp_path):
    """As CRIU's plugin runs it: a bare `cuda-checkpoint` found on PATH, from another directory
    (the plugin disables itself when `-h` fails, and a GPU capture then stops at the device VMAs)."""
    helper.stop()
    out = subprocess.run(["cuda-checkpoint", "-h"], capture_output=True, text=True, cwd=tmp_path,
                         env={**os.environ, "PATH": libexec + os.pathsep + os.environ["PATH"]})
    assert out.returncode == 0 and "--action" in out.stdout, out.stderr
