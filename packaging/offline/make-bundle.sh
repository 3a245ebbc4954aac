#!/usr/bin/env bash
# Make a bundle for a node that cannot reach a package archive (an air-gapped GPU node), on a Debian
# machine where packaging/install-node.sh ran: rewarm's CRIU (patched) with its shared libraries and
# CUDA plugin, runc with libseccomp, the CUDA helper's client, and wheels of rewarm and the Python
# packages it needs for the node's Python version. packaging/offline/install.sh installs it there.
#   make-bundle.sh DIR [PYTHON_VERSION]      e.g. make-bundle.sh /tmp/bundle 3.12
set -euo pipefail
out=${1:?usage: make-bundle.sh DIR [PYTHON_VERSION]}
py=${2:-3.12}
here=$(cd "$(dirname "$0")/../.." && pwd)
rm -rf "$out"
mkdir -p "$out/lib" "$out/bin" "$out/plugins" "$out/wheels"

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

# rewarm itself, and what the node's Python lacks (a GPU image usually has torch, psutil,
# nvidia-ml-py, requests, attrs): binary wheels for its version.
python3 -m pip wheel -q --no-deps -w "$out/wheels" "$here"
python3 -m pip download -q --no-deps --only-binary=:all: --python-version "$py" --implementation cp \
  --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform manylinux_2_28_x86_64 \
  -d "$out/wheels" jsonschema jsonschema-specifications referencing rpds-py pyroute2 tomlkit 'attrs>=22.2' \
  prometheus_client jwcrypto cryptography cffi pycparser typing_extensions shtab tqdm
du -sh "$out"
