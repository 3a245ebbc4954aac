"""OCI bundles for a Python worker built from the node's own /usr, with no image registry.

Used by the tests and the benchmarks. Each bundle gets what containerd would give a
container: an overlay rootfs (so its writes land in an upper dir that capture can diff), its own
network namespace, pid/mount/ipc/uts namespaces and its own cgroup.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
from dataclasses import dataclass, field
from typing import Any

from runtime.container import mounts
from runtime.netns import netns_http
from runtime.netns.netns_http import NETNS_DIR

MERGED_USR_LINKS = {"bin": "usr/bin", "sbin": "usr/sbin", "lib": "usr/lib", "lib64": "usr/lib64"}
BASE_DIRS = ("usr", "etc", "tmp", "proc", "dev", "sys", "run", "var", "root", "app", "opt")


def make_base_rootfs(path: str) -> str:
    """A read-only lower layer: empty dirs plus merged-/usr symlinks (bind-mounting /lib and
    friends makes CRIU's restore fail on merged-/usr hosts)."""
    if os.path.isdir(os.path.join(path, "usr")):
        return path
    os.makedirs(path, exist_ok=True)
    for d in BASE_DIRS:
        os.makedirs(os.path.join(path, d), exist_ok=True)
    os.chmod(os.path.join(path, "tmp"), 0o1777)
    for name, target in MERGED_USR_LINKS.items():
        if os.path.islink(f"/{name}"):
            os.symlink(target, os.path.join(path, name))
        else:
            os.makedirs(os.path.join(path, name), exist_ok=True)
    with open(os.path.join(path, "etc", "passwd"), "w") as f:
        f.write("root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/false\n")
    with open(os.path.join(path, "etc", "group"), "w") as f:
        f.write("root:x:0:\nnogroup:x:65534:\n")
    return path


def _bind(dest: str, source: str, ro: bool = True) -> dict[str, Any]:
    return {"destination": dest, "type": "bind", "source": source,
            "options": ["bind", "rprivate", "ro" if ro else "rw", "nosuid", "nodev"]}


def _host_binds(binds: dict[str, str]) -> list[dict[str, Any]]:
    """Read-only binds, each mount below a bound host dir bound on its own: CRIU can only leave
    out (as external) the mounts that the spec names, so an rbind's submounts would fail a dump."""
    points = mounts.points()
    out = []
    for dest, source in sorted(binds.items()):
        out.append(_bind(dest, source))
        for point in sorted(set(points)):
            if point.startswith(source.rstrip("/") + "/"):
                out.append(_bind(dest.rstrip("/") + point[len(source.rstrip("/")):], point))
    return out


@dataclass
class Worker:
    """What runs in the container."""
    args: list[str]
    env: list[str] = field(default_factory=list)
    binds: dict[str, str] = field(default_factory=dict)   # container path -> host path (read-only)
    annotations: dict[str, str] = field(default_factory=dict)
    devices: list[dict[str, Any]] = field(default_factory=list)
    cwd: str = "/"
    hooks: dict[str, list[dict[str, Any]]] = field(default_factory=dict)   # OCI hooks of the spec
    upper_limit_mb: int | None = None   # its rootfs writes go to a tmpfs of this size (a full disk, for tests)


def spec(worker: Worker, netns: str, cgroup: str, hostname: str = "worker") -> dict[str, Any]:
    host_binds = _host_binds({"/usr": "/usr", **worker.binds})
    caps = ["CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_FOWNER", "CAP_KILL", "CAP_NET_BIND_SERVICE",
            "CAP_SETGID", "CAP_SETUID"]
    return {
        "ociVersion": "1.0.2",
        "process": {
            "terminal": False, "user": {"uid": 0, "gid": 0}, "args": worker.args, "cwd": worker.cwd,
            "env": [*([] if any(e.startswith("PATH=") for e in worker.env) else ["PATH=/usr/local/bin:/usr/bin:/bin"]),
                    "PYTHONUNBUFFERED=1", *worker.env],
            "capabilities": {k: caps for k in ("bounding", "effective", "permitted")},
            "noNewPrivileges": True,
        },
        "root": {"path": "rootfs", "readonly": False},
        "hostname": hostname,
        "mounts": [
            {"destination": "/proc", "type": "proc", "source": "proc"},
            {"destination": "/dev", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]},
            {"destination": "/dev/pts", "type": "devpts", "source": "devpts", "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620"]},
            {"destination": "/dev/shm", "type": "tmpfs", "source": "shm", "options": ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"]},
            {"destination": "/sys", "type": "sysfs", "source": "sysfs", "options": ["nosuid", "noexec", "nodev", "ro"]},
            *host_binds,
        ],
        "annotations": dict(worker.annotations),
        **({"hooks": worker.hooks} if worker.hooks else {}),
        "linux": {
            "namespaces": [{"type": "pid"}, {"type": "ipc"}, {"type": "uts"}, {"type": "mount"},
                           {"type": "network", "path": netns}],
            "cgroupsPath": cgroup,
            "devices": worker.devices,
            "resources": {"devices": [{"allow": False, "access": "rwm"}] + [
                {"allow": True, "type": d.get("type", "c"), "major": d["major"], "minor": d["minor"], "access": "rwm"}
                for d in worker.devices]},
            "maskedPaths": ["/proc/kcore", "/proc/keys", "/proc/timer_list", "/sys/firmware"],
            "readonlyPaths": ["/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger"],
        },
    }


@dataclass
class Bundle:
    path: str

    @property
    def rootfs(self) -> str:
        return os.path.join(self.path, "rootfs")

    @property
    def upper(self) -> str:
        return os.path.join(self.path, "layers", "upper")

    def remove(self) -> None:
        mounts.unmount_under(self.path)
        shutil.rmtree(self.path, ignore_errors=True)


def make_bundle(path: str, base: str, worker: Worker, netns: str, cgroup: str) -> Bundle:
    """A bundle dir with config.json and an overlay rootfs mounted on base (as containerd does)."""
    b = Bundle(path)
    layers = os.path.join(path, "layers")
    os.makedirs(layers, exist_ok=True)
    if worker.upper_limit_mb:
        subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={worker.upper_limit_mb}m", "tmpfs", layers], check=True)
    for d in (b.rootfs, b.upper, os.path.join(layers, "work")):
        os.makedirs(d, exist_ok=True)
    subprocess.run(["mount", "-t", "overlay", "overlay", "-o",
                    f"lowerdir={base},upperdir={b.upper},workdir={os.path.join(layers, 'work')}",
                    b.rootfs], check=True, capture_output=True)
    with open(os.path.join(path, "config.json"), "w") as f:
        json.dump(spec(worker, netns, cgroup), f, indent=2)
    return b


LO_UP = ("import fcntl, socket, struct\n"
         "s = socket.socket()\n"
         "fcntl.ioctl(s, 0x8914, struct.pack('16sH22x', b'lo', 0x41))  # SIOCSIFFLAGS: IFF_UP | IFF_RUNNING\n")


def make_netns(name: str) -> str:
    """A named network namespace with loopback up (what a CNI plugin would give a pod, minus IPs).
    Uses iproute2 where present, else util-linux's unshare (some GPU hosts have no `ip`)."""
    path = os.path.join(NETNS_DIR, name)
    if shutil.which("ip"):
        subprocess.run(["ip", "netns", "add", name], check=True, capture_output=True)
    else:
        os.makedirs(NETNS_DIR, exist_ok=True)
        open(path, "w").close()
        subprocess.run(["unshare", f"--net={path}", "true"], check=True, capture_output=True)
    subprocess.run(["nsenter", f"--net={path}", "/usr/bin/python3", "-c", LO_UP], check=True, capture_output=True)
    return path


def remove_netns(name: str) -> None:
    if shutil.which("ip"):
        subprocess.run(["ip", "netns", "delete", name], capture_output=True)
        return
    path = os.path.join(NETNS_DIR, name)
    subprocess.run(["umount", path], capture_output=True)
    if os.path.exists(path):
        os.unlink(path)


def http_get(netns: str, url: str, timeout: float = 5.0) -> str:
    """GET url from inside a network namespace; the body of a 2xx answer, else ''."""
    status, body = netns_http.request(netns, url, timeout=timeout)
    return body if 200 <= status < 300 else ""
