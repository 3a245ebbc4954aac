"""The node installer image is built from this repo (make-bundle.sh, then Podman's build of
packaging/kubernetes/Containerfile: FROM scratch, the offline bundle and nothing else) and, run as
the DaemonSet runs it (privileged, the host's PID namespace, a node's / at /host), refuses a node it
does not support with one clear line and exits non-zero (so the pod fails, never Ready).
The install itself is not run here: it would replace this machine's containerd config."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest

from runtime.lab.runc_lab import CHECKOUT

IMAGE = "localhost/rewarm/node-installer:test"
PODMAN = ["podman", "--runtime", "runc"]
# This machine refuses to raise resource limits (no CAP_SYS_RESOURCE); Podman sets them unless told lower.
LIMITS = ["--ulimit", "nofile=4096:4096", "--ulimit", "nproc=4096:4096"]


@pytest.fixture(scope="module")
def image(tmp_path_factory):
    context = tmp_path_factory.mktemp("installer")
    bundle = context / ".installer-bundle"
    py = "%d.%d" % sys.version_info[:2]
    out = subprocess.run(["bash", os.path.join(CHECKOUT, "packaging/offline/make-bundle.sh"), str(bundle), py],
                         capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, out.stderr[-3000:]
    shutil.copy(os.path.join(CHECKOUT, "packaging/kubernetes/Containerfile"), context / "Containerfile")
    built = subprocess.run([*PODMAN, "build", "-q", "-f", str(context / "Containerfile"), "-t", IMAGE, str(context)],
                           capture_output=True, text=True, timeout=600)
    assert built.returncode == 0, built.stderr[-3000:]
    yield {"bundle": bundle}
    subprocess.run([*PODMAN, "rmi", "-f", IMAGE], capture_output=True)


def installer(host_root: str) -> subprocess.CompletedProcess[str]:
    """As the DaemonSet runs it; the host's namespaces are entered through this test's process (PID 1
    of this machine does not let even root open its namespaces)."""
    return subprocess.run([*PODMAN, "run", "--rm", *LIMITS, "--privileged", "--pid=host", "--network=none",
                           "-e", f"HOST_PID={os.getpid()}", "-v", f"{host_root}:/host", IMAGE],
                          capture_output=True, text=True, timeout=120)


def test_the_image_is_the_bundle_alone(image):
    files = subprocess.run([*PODMAN, "run", "--rm", *LIMITS, "--entrypoint", "/payload/bin/busybox", IMAGE, "find", "/",
                            "-xdev", "-type", "f"], capture_output=True, text=True, timeout=120).stdout.split()
    outside = [f for f in files if not f.startswith(("/payload/", "/etc/hosts", "/etc/resolv.conf", "/etc/hostname",
                                                     "/run/"))]
    assert outside == [] and "/payload/node-install.sh" in files and "/payload/bin/criu" in files
    assert any(f.startswith("/payload/wheels/rewarm-") for f in files)


@pytest.mark.parametrize("layout, line", [
    ({}, "rewarm node-install: no /etc/os-release on the node: unsupported"),
    ({"etc/os-release": "ID=debian\n"}, "rewarm node-install: the kernel lacks checkpoint/restore"),
    ({"etc/os-release": "ID=debian\n", "proc/sys/kernel/ns_last_pid": "1\n"},
     "rewarm node-install: neither containerd nor CRI-O runs on the node"),
])
def test_an_unsupported_node_is_refused_with_one_line_and_the_pod_fails(image, tmp_path, layout, line):
    for rel, text in layout.items():
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text(text)
    out = installer(str(tmp_path))
    assert out.returncode == 1, out
    assert out.stderr.strip().splitlines()[-1].startswith(line), out.stderr
    assert not (tmp_path / "opt").exists() and not (tmp_path / "etc" / "rewarm").exists()   # nothing written
