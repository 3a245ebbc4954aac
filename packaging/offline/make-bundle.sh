#!/usr/bin/env bash
# Make rewarm's node bundle (what the node installer image carries, and what an air-gapped node
# installs with install.sh), on a Debian machine where packaging/install-node.sh ran (rewarm's CRIU
# and CUDA client, Debian's python3, a static busybox) and patchelf is installed:
#   make-bundle.sh [--extras LIST] [--parts DIR] BUNDLE
# --extras: rewarm's optional dependencies to bring (default `agent`, the node agent's Kubernetes
#   client, which the installer image runs; `--extras ""` leaves them out).
# --parts DIR: also write the bundle as an xz-compressed tarball cut into parts of at most 58 MiB
#   (DIR/rewarm-bundle.tar.xz.00, .01, ...) and DIR/SHA256SUMS, for a node reached only through
#   transfers of at most 64 MiB. On the node, in the folder the parts were put in:
#     sha256sum -c SHA256SUMS && cat rewarm-bundle.tar.xz.* | xz -d | tar -x -C BUNDLE
#   (BUNDLE an empty folder; no xz or tar there: unpack on any Linux machine and copy BUNDLE), then
#   BUNDLE/bin/sh BUNDLE/install.sh BUNDLE.
# The bundle brings its own CPython (with rewarm installed for it), glibc and every library its
# binaries load, and a static busybox for every script on the node's side: a node needs nothing of
# its userland (README.md here says why and how it is laid out on the node).
set -euo pipefail
extras=agent parts=
while [ $# -gt 1 ]; do
  case $1 in
    --extras) extras=$2; shift 2 ;;
    --parts) parts=$2; shift 2 ;;
    *) break ;;
  esac
done
out=${1:?usage: make-bundle.sh [--extras LIST] [--parts DIR] BUNDLE}
[ $# -eq 1 ] || { echo "make-bundle: one BUNDLE folder (the bundle brings its own Python: no PYTHON_VERSION)" >&2; exit 2; }
here=$(cd "$(dirname "$0")/../.." && pwd)
prefix=/opt/rewarm                                   # where install.sh puts it: the loader's path names it
py=/usr/bin/python3                                  # Debian's CPython (install-node.sh installs it)
command -v patchelf >/dev/null || { echo "make-bundle: needs patchelf (apt-get install patchelf)" >&2; exit 1; }
criu=$(readlink -f /usr/local/sbin/criu)
"$criu" --version | grep -q '^Parallel-fill:' || { echo "$criu is not rewarm's CRIU (run install-node.sh)" >&2; exit 1; }
{ [ -x /bin/busybox ] && ! ldd /bin/busybox >/dev/null 2>&1; } || { echo "make-bundle: no static /bin/busybox (busybox-static)" >&2; exit 1; }
pyver=$("$py" -c 'import sys; print("%d.%d" % sys.version_info[:2])')
stdlib=$("$py" -c 'import sysconfig; print(sysconfig.get_path("stdlib"))')
rm -rf "$out"
mkdir -p "$out/bin" "$out/lib" "$out/criu-plugins"
out=$(cd "$out" && pwd)
site=$out/lib/python3/dist-packages                  # where Debian's site.py looks under the prefix

# The binaries.
install -m 0755 /bin/busybox "$criu" "$(command -v runc)" /opt/rewarm/bin/rewarm-cuda-checkpoint "$out/bin/"
ln -s busybox "$out/bin/sh"
install -m 0755 "$(readlink -f "$py")" "$out/bin/python3"
cp "$(dirname "$criu")/cuda_plugin.so" "$out/criu-plugins/"
install -m 0755 "$here/packaging/kubernetes/node-install.sh" "$here/packaging/offline/install.sh" "$out/"
# glibc whole (the loader and every library of Debian's libc6, also those only a driver library or
# an NSS module asks for), so that nothing of the node's older glibc is ever mixed in.
cp -L /lib64/ld-linux-x86-64.so.2 "$out/lib/"
dpkg -L libc6 | grep -E '^/(usr/)?lib/x86_64-linux-gnu/[^/]+\.so[.0-9]*$' | while read -r lib; do cp -nL "$lib" "$out/lib/"; done
# The standard library, less what only builds, tests or draws.
tar -C "$(dirname "$stdlib")" -cf - --exclude='config-*' --exclude=__pycache__ --exclude=test --exclude=idlelib \
  --exclude=tkinter --exclude=turtledemo --exclude=ensurepip --exclude=lib2to3 --exclude=pydoc_data \
  --exclude='_test*.so' --exclude='_ctypes_test*.so' --exclude='xxlimited*.so' --exclude='_xxtestfuzz*.so' \
  "$(basename "$stdlib")" | tar -C "$out/lib" -xf -

# rewarm and everything it and its node agent import, resolved by pip from rewarm's own metadata,
# as binary wheels for the bundled interpreter (its version, and any glibc up to the bundled one).
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
python3 -m pip wheel -q --no-deps -w "$work" "$here"
glibc=$(getconf GNU_LIBC_VERSION | sed 's/.*2\.//')
platforms=(manylinux1_x86_64 manylinux2010_x86_64 manylinux2014_x86_64)
for minor in $(seq 5 "$glibc"); do platforms+=("manylinux_2_${minor}_x86_64"); done
python3 -m pip install -q --no-compile --no-warn-conflicts --disable-pip-version-check --root-user-action=ignore --only-binary=:all: \
  --python-version "$pyver" --implementation cp --abi "cp${pyver/./}" "${platforms[@]/#/--platform=}" \
  --target "$site" "rewarm${extras:+[$extras]} @ file://$(ls "$work"/rewarm-*.whl)"
PYTHONDONTWRITEBYTECODE=1 "$out/bin/python3" -I -m runtime.clients.api.generate >/dev/null   # its protobuf modules, now
# Bytecode now, checked by nothing at run time: the bundle is never edited in place, and a copy
# (an image layer, a tarball) need not keep the sources' times.
"$out/bin/python3" -I -m compileall -q -j0 --invalidation-mode unchecked-hash "$out/lib/python$pyver" "$site" >/dev/null

# Every shared library that something of the bundle loads, from this machine (ldd's closure).
find "$out" -type f \( -path "$out/bin/*" -o -path "$out/criu-plugins/*" -o -name '*.so' -o -name '*.so.*' \) \
     -exec sh -c 'for f; do [ "$(head -c4 "$f" | od -An -tx1 | tr -d " ")" = 7f454c46 ] && echo "$f"; done' sh {} + |
while read -r f; do
  { ldd "$f" 2>/dev/null || true; } | awk '$2 == "=>" && $3 ~ /^\// {print $3}'
done | sort -u | while read -r lib; do
  case $lib in "$out"/*) ;; *) cp -nL "$lib" "$out/lib/" ;; esac
done

# Its name: what it holds. Then everything that names that place.
version=$(ls "$site" | sed -n 's/^rewarm-\(.*\)\.dist-info$/\1/p')
hash=$(cd "$out" && find . \( -type f -o -type l \) -print0 | LC_ALL=C sort -z | xargs -0 sha256sum | sha256sum | cut -c1-12)
release=$prefix/bundle-$version-$hash
echo "$release" > "$out/release"
for cmd in rewarm rewarm-runc-engine rewarm-hook; do   # pip's launchers, on the bundle's interpreter
  { echo "#!$release/bin/python3 -I"; tail -n +2 "$site/bin/$cmd"; } > "$out/bin/$cmd"
done
{ echo "#!$release/bin/sh"; tail -n +2 "$site/bin/rewarm-runc"; } > "$out/bin/rewarm-runc"   # the front door, on busybox sh
chmod 0755 "$out"/bin/rewarm*
rm -rf "$site/bin"
# Executables start through the bundle's loader and look in its lib first. DT_RPATH: it serves what
# their libraries and extension modules load too (none has a RUNPATH of its own, which would hide it;
# the check below would name one). Its absolute place first: runc's `init` re-executes itself from a
# memfd copy, whose $ORIGIN is no folder of the bundle; then $ORIGIN's, for the check below.
for f in "$out"/bin/*; do
  if [ ! -L "$f" ] && patchelf --print-interpreter "$f" >/dev/null 2>&1; then
    patchelf --set-interpreter "$release/lib/ld-linux-x86-64.so.2" --force-rpath --set-rpath "$release/lib:\$ORIGIN/../lib" "$f"
  fi
done

# The bundle checks itself, through its own loader: every extension module imports, and nothing it
# maps, nor anything the binaries load, comes from outside the bundle.
loader=$out/lib/ld-linux-x86-64.so.2
for bin in criu runc rewarm-cuda-checkpoint python3; do
  outside=$("$loader" --list "$out/bin/$bin" | awk '$2 == "=>" {print $3; next} $1 ~ /^\// {print $1}' | grep -v "^$out/" || true)
  [ -z "$outside" ] || { echo "make-bundle: $bin loads from outside the bundle: $outside" >&2; exit 1; }
done
"$loader" "$out/bin/criu" --version | grep -q '^Parallel-fill:'
"$loader" "$out/bin/runc" --version >/dev/null
"$loader" "$out/bin/python3" -I - "$out" <<'PY'
import importlib, importlib.machinery, pathlib, sys, sysconfig
top = pathlib.Path(sys.argv[1])
suffixes = sorted(importlib.machinery.EXTENSION_SUFFIXES, key=len, reverse=True)
failed = []
for root in (pathlib.Path(sysconfig.get_path("platstdlib")) / "lib-dynload", top / "lib/python3/dist-packages"):
    for so in sorted(root.rglob("*.so")):
        suffix = next((s for s in suffixes if so.name.endswith(s)), None)
        if suffix is None or any(p.endswith(".libs") for p in so.parts):
            continue
        name = ".".join([*so.relative_to(root).parts[:-1], so.name[:-len(suffix)]])
        try:
            importlib.import_module(name)
        except Exception as e:   # a missing library or symbol; other refusals are the module's own
            if any(w in str(e) for w in ("shared object", "GLIBC", "undefined symbol", "version `")):
                failed.append(f"{name}: {e}")
import runtime.cli.main, runtime.engine.runc_entry, oci_hooks.main  # noqa: E401,F401  rewarm's commands
import pkgutil, runtime  # noqa: E401  and every module of the node's (the lab's are the tests')
for module in pkgutil.walk_packages(runtime.__path__, "runtime."):
    if not module.name.startswith("runtime.lab"):
        try:
            importlib.import_module(module.name)
        except ImportError as e:
            failed.append(f"{module.name}: {e}")
for line in open("/proc/self/maps"):
    fields = line.split(maxsplit=5)
    path = fields[5].strip() if len(fields) == 6 else ""
    if path.startswith("/") and not path.startswith(f"{top}/"):
        with open(path, "rb") as f:
            if f.read(4) == b"\x7fELF":
                failed.append(f"{path} mapped from outside the bundle")
if failed:
    sys.exit("make-bundle: " + "\n  ".join(sorted(set(failed))))
PY

if [ -n "$parts" ]; then   # for transfers of at most 64 MiB: xz parts of 58 MiB and their sums
  mkdir -p "$parts"
  rm -f "$parts"/rewarm-bundle.tar.xz.* "$parts/SHA256SUMS"
  tar -C "$out" -cf - . | xz -T0 -6 | split -b 58M -d -a 2 - "$parts/rewarm-bundle.tar.xz."
  (cd "$parts" && sha256sum rewarm-bundle.tar.xz.* > SHA256SUMS)
fi
echo "make-bundle: $release, $(du -sh "$out" | cut -f1)${parts:+, parts: $(du -ch "$parts"/rewarm-bundle.tar.xz.* | tail -1 | cut -f1) in $parts}"
