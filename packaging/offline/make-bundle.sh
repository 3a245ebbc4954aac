#!/usr/bin/env bash
# Make a bundle for a node that cannot reach a package archive (an air-gapped GPU node), on a Debian
# machine where packaging/install-node.sh ran: rewarm's CRIU (patched) with its shared libraries and
# CUDA plugin, runc with libseccomp, the CUDA helper's client, and wheels of rewarm and the Python
# packages it needs for the node's Python version. packaging/offline/install.sh installs it there.
#   make-bundle.sh DIR [PYTHON_VERSION [EXTRAS]]   e.g. make-bundle.sh /tmp/bundle 3.12
# EXTRAS: rewarm's optional dependencies to bring (default `agent`, the node agent's Kubernetes
# client, which the installer image runs; `""` leaves them out of a bundle for a node without one).
set -euo pipefail
out=${1:?usage: make-bundle.sh DIR [PYTHON_VERSION]}
py=${2:-3.12}
extras=${3-agent}
here=$(cd "$(dirname "$0")/../.." && pwd)
rm -rf "$out"
mkdir -p "$out/lib" "$out/bin" "$out/plugins" "$out/wheels"
out=$(cd "$out" && pwd)

copy_with_libs() {   # a binary and the shared libraries it loads, except glibc's own
  install -m 0755 "$1" "$out/bin/"
  ldd "$1" | awk '$3 ~ /^\// {print $3}' | grep -Ev '/(libc|libm|libpthread|libdl|librt|ld-linux[^/]*)\.so' \
    | while read -r lib; do cp -nL "$lib" "$out/lib/"; done
}
criu=$(readlink -f /usr/local/sbin/criu)
"$criu" --version | grep -q '^Parallel-fill:' || { echo "$criu is not rewarm's CRIU (run install-node.sh)"; exit 1; }
copy_with_libs "$criu"
copy_with_libs "$(command -v runc)"
# The node installer image (packaging/kubernetes/Containerfile) runs from the bundle alone: a static
# busybox for its shell and nsenter, and its script.
if [ -x /bin/busybox ] && ! ldd /bin/busybox >/dev/null 2>&1; then install -m 0755 /bin/busybox "$out/bin/"; fi
install -m 0755 "$here/packaging/kubernetes/node-install.sh" "$here/packaging/offline/install.sh" "$out/"
cp "$(dirname "$criu")/cuda_plugin.so" "$out/plugins/"
install -m 0755 /opt/rewarm/bin/rewarm-cuda-checkpoint "$out/bin/"

# rewarm and everything it and its node agent import, resolved by pip from rewarm's own metadata
# (pyproject's dependencies and the `agent` extra), as binary wheels for the nodes' Python: a node
# brings only python3, and its own site-packages never decide which versions rewarm runs with.
python3 -m pip wheel -q --no-deps -w "$out/wheels" "$here"
wheel=$(ls "$out"/wheels/rewarm-*.whl)
python3 -m pip download -q --only-binary=:all: --python-version "$py" --implementation cp \
  --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform manylinux_2_28_x86_64 \
  --platform manylinux_2_5_x86_64 --platform manylinux1_x86_64 \
  -d "$out/wheels" "rewarm${extras:+[$extras]} @ file://$wheel" pip   # pip: install.sh runs it from its wheel
du -sh "$out"
