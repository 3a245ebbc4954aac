"""The tests on a new machine: every host path outside the checkout that the tests (and the lab and
worker set-ups they use) name is made by packaging/setup.sh (or what it runs) or by the lab itself,
so that README's test command passes on a machine nobody prepared by hand. Paths that name places
inside containers, images or test data are listed too, so a new host path cannot slip in unseen."""
from __future__ import annotations

import ast
import glob
import os
import re

TOP = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SCANNED = ["tests/**/*.py", "runtime/lab/*.py", "examples/**/deps.py"]
OUTSIDE = re.compile(r"^/(opt|var|etc|usr/local|srv|home|root|run|mnt|data)/")
SETUP = ["packaging/setup.sh", "packaging/install-node.sh", "examples/llm-worker/deps.py",
         "tests/system/workers/engine_tree/engine_site.py"]

# Host paths the tests need: the file that makes them, and what in it does (its name for the path).
MADE_BY = {
    "/opt/rewarm/containerd-sid/usr/bin": ("packaging/setup.sh", "/opt/rewarm/containerd-sid"),   # CRI tests
    "/opt/rewarm/criu-src": ("packaging/setup.sh", "--keep-source /opt/rewarm/criu-src"),   # CRIU's tree, zdtm
    "/usr/local/sbin/criu": ("packaging/install-node.sh", "/usr/local/sbin/criu"),
    "/var/tmp/rewarm-bench/torch-site": ("examples/llm-worker/deps.py", "--target"),
    "/var/tmp/rewarm-bench/engine-site": ("tests/system/workers/engine_tree/engine_site.py", "_deps.install(site"),
    "/run/rewarm-lab": ("runtime/lab/containerd_lab.py", "os.makedirs"),   # the lab makes its own dirs
    "/var/lib/rewarm-lab": ("runtime/lab/containerd_lab.py", "os.makedirs"),
    "/run/netns/": ("runtime/lab/bundles.py", '"ip", "netns", "add"'),   # a test's own namespaces
    "/var/run/netns/": ("runtime/lab/bundles.py", '"ip", "netns", "add"'),
    "/run/containerd": ("tests/system/throwaway_node.py", 'os.makedirs("/run/containerd")'),   # made, then removed
    "/var/lib/dpkg/status": ("packaging/setup.sh", "apt-get"),   # dpkg's own: checked unchanged, never written
    "/var/lib/rewarm-lab/debian11-userland": ("tests/system/throwaway_node.py", '"debootstrap"'),   # a node's root
}
# Paths inside containers, images or hostile test data: never read on the host.
INSIDE = {
    "/etc/docker/registry", "/etc/docker/registry/htpasswd", "/etc/docker/registry/server.crt",
    "/etc/docker/registry/server.key", "/var/lib/registry",             # the registry's container
    "/etc/group", "/etc/passwd",                                         # image files
    "/opt/engine-site", "/opt/torch",                                    # bind destinations in containers
    "/run/rewarm/ready", "/var/cache/worker/state.json",                 # inside the workers
    "/etc/hosts", "/etc/resolv.conf", "/run/",                           # inside the installer's container
    "/var/run/secrets/kubernetes.io/serviceaccount",                     # its ServiceAccount's files (kube_stand_in.py)
    "/etc/cron.d/evil", "/etc/hostname", "/etc/x", "/srv/a", "/srv/b", "/srv/c",   # hostile or made-up paths
    "/etc/rewarm/node.json", "/usr/local/bin/rewarm-runc",               # strings in configs under test
    "/opt/rewarm/bin/rewarm-runc",                                       # on the throwaway node, in its config
    "/opt/rewarm/bin/", "/opt/rewarm/bin/criu", "/opt/rewarm/bin/runc", "/opt/rewarm/bundle-",
    "/etc/rewarm/config.json", "/etc/containerd/conf.d/*.toml",          # on the throwaway node (its overlays)
    "/usr/local/lib/containerd", "/usr/local/lib/containerd/ld-linux-x86-64.so.2",   # in its Debian 11 userland
    "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",     # its service manager's PATH
    "/usr/local/nvidia/toolkit/nvidia-container-runtime",
    "/root/.cache/huggingface/hub", "/root/.cache/huggingface/hub/models--org--m/snapshots",
    "/root/.cache/huggingface/hub/models--org--m/snapshots/abc/",        # a container's hub cache
    "/data/ballast.bin", "/data/link",                                   # a worker's bind mount
    "/data/link is not a regular file under a bind mount of the container",   # a reason, quoted
}


def named_paths() -> dict[str, set[str]]:
    found: dict[str, set[str]] = {}
    for pattern in SCANNED:
        for path in glob.glob(os.path.join(TOP, pattern), recursive=True):
            if os.path.samefile(path, __file__):
                continue
            with open(path) as f:
                tree = ast.parse(f.read())
            for node in ast.walk(tree):
                if isinstance(node, ast.Constant) and isinstance(node.value, str) and OUTSIDE.match(node.value):
                    found.setdefault(node.value, set()).add(os.path.relpath(path, TOP))
    return found


def test_every_host_path_the_tests_name_is_made_by_setup_or_the_lab():
    unknown = {p: sorted(where) for p, where in named_paths().items() if p not in MADE_BY and p not in INSIDE}
    assert unknown == {}, "name where each is made (MADE_BY) or why it is not a host path (INSIDE)"
    for path, (maker, how) in MADE_BY.items():
        with open(os.path.join(TOP, maker)) as f:
            text = f.read()
        assert how in text, f"{maker} does not make {path}"


def test_setup_runs_every_preparation_the_tests_need():
    with open(os.path.join(TOP, "packaging", "setup.sh")) as f:
        setup = f.read()
    for script in SETUP[1:]:
        assert script.split("/", 1)[1] in setup or script in setup, f"setup.sh does not run {script}"
    assert ".zdtm-ready" in setup    # test_criu_zdtm.py asserts it: only setup.sh may make it
