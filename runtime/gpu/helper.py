"""The resident CUDA helper: the driver loaded and initialised once, serving the cuda-checkpoint
commands that CRIU's CUDA plugin runs.

Why: the plugin runs `cuda-checkpoint` several times per restore (its help, the restore thread id,
restore, unlock). Run directly, each one starts Python, loads libcuda and calls cuInit, which
costs far more than the restore copy itself. Here the plugin's `cuda-checkpoint` is a small C
client (packaging/cuda-client/) that hands its command line and the REWARM_CUDA_* environment to
this process over a root-only unix socket and prints what comes back. The engine starts the helper
at the beginning of a GPU restore or capture, so cuInit runs while CRIU restores memory; a request
that comes before the driver is ready waits for it. The helper ends after IDLE_EXIT_S without
requests. Where it cannot run, the client runs the Python command itself (the slow path).

Wire format: the request is the argv, NUL-separated, an empty field, then KEY=VALUE environment
fields, NUL-separated, then end of stream; the answer is "CODE\\n", stdout, NUL, stderr.
"""
from __future__ import annotations

import contextlib
import fcntl
import os
import signal
import socket
import socketserver
import subprocess
import sys
import threading
import time

from runtime.gpu import cuda_cli
from runtime.gpu.driver import Driver
from runtime.host import procfs
from runtime.model import cuda_env, layout
from runtime.model.errors import CudaError

SOCKET = os.path.join(layout.RUN_DIR, "cuda-helper.sock")
LOCK = os.path.join(layout.RUN_DIR, "cuda-helper.lock")
IDLE_EXIT_S = 900.0
FORWARDED_ENV = (cuda_env.DEVICE_MAP, cuda_env.LOCK_TIMEOUT_MS, cuda_env.TIMING_LOG)


class _Driver:
    """The driver, initialised in the background once; callers wait until it is there."""

    def __init__(self) -> None:
        self.ready = threading.Event()
        self.driver: Driver | None = None
        self.error: CudaError | None = None
        self.init_seconds = 0.0
        threading.Thread(target=self._load, daemon=True).start()

    def _load(self) -> None:
        t = time.monotonic()
        try:
            self.driver = Driver()
        except CudaError as e:
            self.error = e
        self.init_seconds = time.monotonic() - t
        self.ready.set()

    def get(self) -> Driver:
        self.ready.wait()
        if self.driver is None:
            assert self.error is not None
            raise self.error
        return self.driver


def parse_request(data: bytes) -> tuple[list[str], dict[str, str]]:
    fields = data.decode("utf-8", "replace").split("\0")
    split = fields.index("") if "" in fields else len(fields)
    env = dict(f.split("=", 1) for f in fields[split + 1:] if "=" in f)
    return fields[:split], {k: v for k, v in env.items() if k in FORWARDED_ENV}


def answer(code: int, out: str, err: str) -> bytes:
    return f"{code}\n{out}\0{err}".encode()


class _Server(socketserver.ThreadingUnixStreamServer):
    daemon_threads = True
    last_request = time.monotonic()


def serve(path: str = SOCKET) -> None:
    """Run the helper until it has been idle IDLE_EXIT_S (one helper per node: a lock says so)."""
    os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
    lock = os.open(LOCK, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return   # another helper serves already
    os.ftruncate(lock, 0)
    os.write(lock, str(os.getpid()).encode())   # for stop()
    driver = _Driver()

    class Handler(socketserver.StreamRequestHandler):
        def handle(self) -> None:
            _Server.last_request = time.monotonic()
            data = self.rfile.read()
            if not data:
                return   # running()'s probe: it connected and left
            argv, env = parse_request(data)
            t = time.monotonic()
            waited = not driver.ready.is_set()
            code, out, err = cuda_cli.execute(argv, env, driver.get)
            if waited and driver.ready.is_set():
                cuda_cli.log_timing(env, "driver-init-wait", os.getpid(), time.monotonic() - t)
            with contextlib.suppress(BrokenPipeError):   # the client was killed meanwhile
                self.wfile.write(answer(code, out, err))
            _Server.last_request = time.monotonic()

    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)
    old_umask = os.umask(0o077)
    try:
        server = _Server(path, Handler)
    finally:
        os.umask(old_umask)
    threading.Thread(target=_exit_when_idle, args=(server,), daemon=True).start()
    try:
        server.serve_forever(poll_interval=0.5)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
        os.close(lock)


def _exit_when_idle(server: _Server) -> None:
    while time.monotonic() - _Server.last_request < IDLE_EXIT_S:
        time.sleep(5)
    server.shutdown()


def running(path: str = SOCKET) -> bool:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        try:
            s.connect(path)
            return True
        except OSError:
            return False


def stop(timeout: float = 10) -> None:
    """Stop the helper that holds the lock, if one does (it starts again when next needed)."""
    try:
        with open(LOCK) as f:
            pid = int(f.read().strip())
        os.kill(pid, signal.SIGTERM)
    except (OSError, ValueError):
        return
    deadline = time.monotonic() + timeout
    while _alive(pid) and time.monotonic() < deadline:
        time.sleep(0.02)
    with contextlib.suppress(FileNotFoundError):
        os.unlink(SOCKET)


def _alive(pid: int) -> bool:
    found = procfs.stat(pid)
    return found is not None and found.alive


def ensure_running() -> None:
    """Start the helper unless one serves already; do not wait for it (its cuInit overlaps the
    restore's memory stage; early requests wait inside the helper)."""
    if running():
        return
    subprocess.Popen([sys.executable, "-m", "runtime.gpu.helper"], stdin=subprocess.DEVNULL,
                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True, cwd="/")
    deadline = time.monotonic() + 5   # the socket appears within milliseconds; the driver comes later
    while not os.path.exists(SOCKET) and time.monotonic() < deadline:
        time.sleep(0.005)


if __name__ == "__main__":
    serve()
