"""A node of its own on this machine, for the node installer to install: a mount namespace in which
/etc, /opt and /usr are overlays (of this machine's, or of another userland's: debian11_userland()),
so that whatever is written there lands in upper directories this test reads and removes (the lower
files are never written), and a containerd of its own (the lab's root, state, socket and CNI
network) that reads the node's /etc/containerd/config.toml, serves on the node's
/run/containerd/containerd.sock and is restarted by a script, as systemd would restart it. On this
machine's userland its python3 has no pip, as on many nodes; Debian 11's has no python3 at all.
A node may have its own /var too (own_var), so that rewarm's default store and event log land on the
node and go with it. Also here: what the node installer's tests do on an installed node (its
containerd's config files, a pod captured and then restored through its CRI)."""
from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import signal
import subprocess
import time
from typing import Any, Callable, Iterator

from runtime.container import mounts
from runtime.snapshot import store
from runtime.lab.containerd_lab import Lab
from runtime.lab.runc_lab import WORKER_DIR

OVERLAID = ("etc", "opt", "usr")   # with this machine's merged /usr, /bin and /lib are /usr's too
PIP = "lib/python3/dist-packages/pip"   # under /usr
# A Debian 11 userland (glibc 2.31, no python3), made here once by debootstrap from Debian's archive
# (`DEBIAN11_RECIPE` names what it holds: a changed recipe makes it again). Its runc and CNI plugins are
# Debian 11's; its containerd is 1.6 (Debian 11's own is 1.4): this machine's build, put under
# /usr/local as a vendor's tarball puts it, beside the C library it was built against, which it
# alone uses (its loader and libc in /usr/local/lib/containerd, named by its ELF headers; the node's
# ld.so.cache does not know that folder).
DEBIAN11 = "/var/lib/rewarm-lab/debian11-userland"
DEBIAN11_RECIPE = "bullseye minbase merged-usr runc containernetworking-plugins hosts containerd-1.6-v1\n"
CONTAINERD_TOOLS = ("containerd", "containerd-shim-runc-v2", "ctr")


def debian11_userland() -> str:
    ready = os.path.join(DEBIAN11, ".recipe")
    with contextlib.suppress(FileNotFoundError), open(ready) as f:
        if f.read() == DEBIAN11_RECIPE:
            return DEBIAN11
    work = DEBIAN11 + ".new"
    shutil.rmtree(work, ignore_errors=True)
    shutil.rmtree(DEBIAN11, ignore_errors=True)
    subprocess.run(["debootstrap", "--variant=minbase", "--merged-usr", "--include=runc,containernetworking-plugins",
                    "bullseye", work, "http://deb.debian.org/debian"], check=True, capture_output=True, timeout=900)
    shutil.rmtree(os.path.join(work, "var/cache/apt/archives"), ignore_errors=True)
    with open(os.path.join(work, "etc/hosts"), "w") as f:   # the installer writes it on a real node
        f.write("127.0.0.1\tlocalhost\n::1\t\tlocalhost ip6-localhost ip6-loopback\n")
    libs = os.path.join(work, "usr/local/lib/containerd")
    os.makedirs(libs)
    for lib in ("/lib64/ld-linux-x86-64.so.2", "/lib/x86_64-linux-gnu/libc.so.6"):
        shutil.copy(lib, libs)
    for tool in CONTAINERD_TOOLS:
        target = os.path.join(work, "usr/local/bin", tool)
        shutil.copy(shutil.which(tool) or tool, target)
        subprocess.run(["patchelf", "--set-interpreter", "/usr/local/lib/containerd/ld-linux-x86-64.so.2",
                        "--set-rpath", "/usr/local/lib/containerd", target], check=True)
    with open(os.path.join(work, ".recipe"), "w") as f:
        f.write(DEBIAN11_RECIPE)
    os.rename(work, DEBIAN11)
    return DEBIAN11


def digest(path: str) -> str:
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


class ThrowawayNode:
    def __init__(self, top: str, bin_dir: str | None, userland: str = "/",
                 prepare: Callable[["ThrowawayNode"], None] | None = None, own_var: bool = False):
        """`bin_dir`: this machine's containerd to run (default: the one on PATH); `userland`: the
        root whose /etc, /opt and /usr the node has (one with a containerd of its own under
        /usr/local/bin, as debian11_userland()'s, runs that one); `prepare`: what else the node has
        before containerd first starts (NVIDIA's toolkit's files, say), written into `merged`;
        `own_var`: /var an overlay too (else the node writes this machine's /var)."""
        self.top = top
        self.lab = Lab(f"node-installer-{os.getpid()}", bin_dir=bin_dir)   # its own: runs beside this one
        self.userland = userland
        self.prepare = prepare
        self.overlaid = OVERLAID + (("var",) if own_var else ())
        self.merged = {d: os.path.join(top, "merged", d) for d in self.overlaid}
        self.upper = {d: os.path.join(top, "upper", d) for d in self.overlaid}
        self.pid_file = os.path.join(top, "containerd.pid")
        self.restart_script = os.path.join(top, "restart-containerd")
        self.manager_script = os.path.join(top, "service-manager")
        self.manager: subprocess.Popen[bytes] | None = None
        self.holder: subprocess.Popen[bytes] | None = None
        self.made_run_dir = False

    # set-up
    def start(self) -> "ThrowawayNode":
        self.lab.destroy()
        self.lab.write_config("", with_rewarm=False)      # the node's own config: no rewarm in it
        for d in self.overlaid:
            work = os.path.join(self.top, "work", d)
            for path in (self.merged[d], self.upper[d], work):
                os.makedirs(path, exist_ok=True)
            subprocess.run(["mount", "-t", "overlay", "overlay", "-o",
                            f"lowerdir={os.path.join(self.userland, d)},upperdir={self.upper[d]},workdir={work}",
                            self.merged[d]], check=True)
        os.makedirs(os.path.join(self.merged["etc"], "containerd"), exist_ok=True)
        shutil.copy(self.lab.config, os.path.join(self.merged["etc"], "containerd", "config.toml"))
        if self.prepare:
            self.prepare(self)
        self.original_config = self.config_text()
        if os.path.isdir(os.path.join(self.merged["usr"], PIP)):   # the node's python3 without pip
            shutil.rmtree(os.path.join(self.merged["usr"], PIP))      # (a whiteout in the upper dir)
        self.baseline = {d: self.upper_files(d) for d in self.overlaid}
        os.makedirs(self.lab.state, exist_ok=True)
        if not os.path.isdir("/run/containerd"):
            os.makedirs("/run/containerd")
            self.made_run_dir = True
        binds = " && ".join(f"mount --{'rbind' if d == 'var' else 'bind'} {self.merged[d]} /{d}"
                            for d in self.overlaid)
        if "var" in self.overlaid:
            # containerd's root (under /var) stays this machine's: its overlayfs snapshots cannot
            # live on an overlay. Bound onto the node's /var first, so the rbind takes it along.
            in_var = os.path.relpath(self.lab.root, "/var")
            assert not in_var.startswith(".."), self.lab.root
            binds = f"mount --bind {self.lab.root} {os.path.join(self.merged['var'], in_var)} && {binds}"
        self.holder = subprocess.Popen(
            ["unshare", "--mount", "--propagation", "private", "--", "sh", "-c",
             f"{binds} && mount --bind {self.lab.state} /run/containerd && echo up && exec sleep 2147483647"],
            stdout=subprocess.PIPE, start_new_session=True)
        assert self.holder.stdout and self.holder.stdout.readline() == b"up\n", "the node's mount namespace"
        self.write_scripts()
        self.manager = subprocess.Popen(["nsenter", "--target", str(self.holder.pid), "--mount", "--", "sh",
                                         self.manager_script], start_new_session=True)
        self.restart()   # its first start
        self.lab.build_pause_image()
        return self

    def write_scripts(self) -> None:
        """The node's service manager for containerd (what systemd is on a node: it runs the daemon
        outside any pod and restarts it when asked), and the `systemctl restart containerd` that asks."""
        path = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"   # systemd's
        if self.lab.bin_dir:
            path = f"{self.lab.bin_dir}:{path}"
        ctr, ask, told = self.lab.tool("ctr"), os.path.join(self.top, "restart.fifo"), os.path.join(self.top, "done.fifo")
        for fifo in (ask, told):
            os.mkfifo(fifo)
        with open(self.manager_script, "w") as f:
            f.write(f"""#!/bin/sh
restart() {{
  if [ -s {self.pid_file} ]; then
    pid=$(cat {self.pid_file}); kill "$pid" 2>/dev/null || true
    while kill -0 "$pid" 2>/dev/null; do sleep 0.1; done
  fi
  env -i PATH={path} containerd --config /etc/containerd/config.toml >>{self.lab.root}/containerd.log 2>&1 </dev/null &
  echo $! > {self.pid_file}
  for i in $(seq 300); do
    env -i PATH={path} {ctr} --address /run/containerd/containerd.sock version >/dev/null 2>&1 && return 0
    sleep 0.1
  done
  return 1
}}
while :; do
  read request < {ask}
  if restart; then echo ok > {told}; else echo failed > {told}; fi
done
""")
        with open(self.restart_script, "w") as f:
            f.write(f"""#!/bin/sh
echo restart > {ask}
read answer < {told}
[ "$answer" = ok ] || {{ echo "containerd did not come back" >&2; exit 1; }}
""")
        os.chmod(self.restart_script, 0o755)

    def restart(self) -> None:
        subprocess.run(["sh", self.restart_script], check=True, timeout=90)

    # what the node shows
    def upper_files(self, d: str) -> dict[str, str]:
        """What was written on the node under /D: each path (relative to it) and its content's
        digest ("whiteout" for a removal, the target for a link)."""
        found = {}
        for dirpath, dirnames, filenames in os.walk(self.upper[d]):
            for name in filenames + [n for n in dirnames if os.path.islink(os.path.join(dirpath, n))]:
                path = os.path.join(dirpath, name)
                rel = os.path.relpath(path, self.upper[d])
                if os.path.islink(path):
                    found[rel] = "-> " + os.readlink(path)
                elif os.path.isfile(path):
                    found[rel] = digest(path)
                else:
                    found[rel] = "whiteout"
        return found

    def written(self, d: str) -> set[str]:
        """The paths under /D written (or removed) since the node was set up."""
        now = self.upper_files(d)
        return {p for p in now.keys() | self.baseline[d].keys() if now.get(p) != self.baseline[d].get(p)}

    def config_text(self) -> str:
        with open(os.path.join(self.merged["etc"], "containerd", "config.toml")) as f:
            return f.read()

    @property
    def containerd_binary(self) -> str:
        """The containerd this node runs, as this machine sees it."""
        own = os.path.join(self.merged["usr"], "local/bin/containerd")
        if self.userland != "/" and os.path.exists(own):
            return own
        return shutil.which(self.lab.tool("containerd")) or ""

    def containerd_files(self) -> dict[str, str]:
        """The node's containerd config files (config.toml, its drop-ins, kept copies) and their texts."""
        top = os.path.join(self.merged["etc"], "containerd")
        found = {}
        for dirpath, _, names in os.walk(top):
            for name in names:
                with open(os.path.join(dirpath, name)) as f:
                    found[os.path.relpath(os.path.join(dirpath, name), top)] = f.read()
        return found

    def host_path(self, path: str) -> str:
        """A path of the node's overlaid folders as this machine sees it (links followed on the node)."""
        for _ in range(8):
            top, rest = path.strip("/").split("/", 1)
            seen = os.path.join(self.merged[top], rest)
            if not os.path.islink(seen):
                return seen
            path = os.path.join(os.path.dirname(path), os.readlink(seen))
        raise AssertionError(f"{path}: too many links")

    def root_mounts(self) -> dict[str, str]:
        """The node's / as a pod's hostPath / sees it, folder by folder: its overlays, /proc, and
        its containerd's run dir (where the node's containerd.sock is)."""
        return {**{d: self.merged[d] for d in self.overlaid}, "proc": "/proc", "run/containerd": self.lab.state}

    def containerd_pid(self) -> int:
        with open(self.pid_file) as f:
            return int(f.read())

    @property
    def pid(self) -> int:
        assert self.holder is not None
        return self.holder.pid

    # tear-down
    def destroy(self) -> None:
        with contextlib.suppress(FileNotFoundError, ValueError, ProcessLookupError):
            os.kill(self.containerd_pid(), signal.SIGKILL)
        if self.manager:
            os.killpg(self.manager.pid, signal.SIGKILL)
            self.manager.wait()
        self.lab.destroy()
        if self.holder:
            self.holder.kill()
            self.holder.wait()
        deadline = time.monotonic() + 10
        for d in self.overlaid:
            while subprocess.run(["umount", self.merged[d]], capture_output=True).returncode != 0 \
                    and os.path.ismount(self.merged[d]) and time.monotonic() < deadline:
                time.sleep(0.2)
        mounts.unmount_under(self.top)
        if self.made_run_dir:
            with contextlib.suppress(OSError):
                os.rmdir("/run/containerd")
        shutil.rmtree(self.top, ignore_errors=True)


def with_systemctl(node: ThrowawayNode) -> None:
    """A `prepare`: the node's systemctl, a stand-in for systemd's that knows one request,
    `systemctl restart containerd`, and hands it to the node's service manager (write_scripts), so
    that the installer's default restart command works here as on a systemd node."""
    path = os.path.join(node.merged["usr"], "local", "sbin", "systemctl")
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        f.write(f"""#!/bin/sh
# systemd's systemctl, a stand-in on a throwaway node (tests/system/throwaway_node.py)
[ "$*" = "restart containerd" ] || {{ echo "systemctl (stand-in): only 'restart containerd' here, not '$*'" >&2; exit 1; }}
exec sh {node.restart_script}
""")
    os.chmod(path, 0o755)


def poll(what: str, predicate: Callable[[], Any], timeout: float = 120) -> Any:
    """predicate()'s first true value, tried every 0.2 s for at most `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not (found := predicate()):
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.2)
    return found


# The handler rewarm adds to an installed node's containerd config.
HANDLER_LINE = 'BinaryName = "/opt/rewarm/bin/rewarm-runc"'
# A pod on an installed node, through its containerd's CRI as kubelet would run it.
WORKER_IMAGE = "localhost/rewarm/warm-worker:installed-node"
WORKER_COMMAND = ["/usr/bin/python3", "/app/worker.py"]
WORKER_ANNOTATIONS = {"rewarm.dev/snapshot": "installed", "rewarm.dev/capture": "on-ready"}
WORKER_ENV = {"WARM_SECONDS": "2", "PORT": "8080"}


@contextlib.contextmanager
def restored_pod(node: ThrowawayNode, store_dir: str) -> Iterator[tuple[dict[str, Any], dict[str, Any]]]:
    """Pod inst-a cold-starts and is captured once ready, into the node's store (`store_dir`, as
    this machine sees it), and is deleted once its snapshot is there; inst-b, the same spec, starts
    from it. Yields (inst-a's answer, inst-b's answer) while inst-b runs, then deletes it."""
    node.lab.build_worker_image(WORKER_IMAGE, WORKER_DIR, [])
    a = node.lab.pod("inst-a", WORKER_IMAGE, WORKER_COMMAND, annotations=WORKER_ANNOTATIONS, env=WORKER_ENV)
    try:
        answer, _ = a.wait_answer()
        poll("the snapshot", lambda: store.Store(store_dir).entries("default", "installed"))
    finally:
        a.delete()
    b = node.lab.pod("inst-b", WORKER_IMAGE, WORKER_COMMAND, annotations=WORKER_ANNOTATIONS, env=WORKER_ENV)
    try:
        restored, _ = b.wait_answer(timeout=60)
        yield answer, restored
    finally:
        b.delete()
