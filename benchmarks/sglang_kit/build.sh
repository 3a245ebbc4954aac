#!/usr/bin/env bash
# Build the offline SGLang kit: OUT/sgsite.tar.xz.partNN (each <= 58 MiB) and OUT/SHA256SUMS.
# Usage: bash benchmarks/sglang_kit/build.sh [OUT]   (OUT defaults to .sgkit; README.md says more)
# Steps: resolve.py (wheels + resolved.json), pip install --no-deps --target OUT/site for cp312
# manylinux, trim what the serving configuration never loads, imports.py (static import check),
# xz -9 tarball of the site, split, checksums.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
out=$(mkdir -p "${1:-.sgkit}" && cd "${1:-.sgkit}" && pwd)
part=${PART_MIB:-58}
py=${PYTHON:-python3}

[[ ${SKIP_RESOLVE:-0} = 1 ]] || "$py" "$here/resolve.py" --out "$out"

site=$out/site
rm -rf "$site" && mkdir -p "$site"
plat=(); for n in $(seq 5 39); do plat+=(--platform "manylinux_2_${n}_x86_64"); done
"$py" -m pip install -q --no-index --no-deps --no-compile --only-binary=:all: --ignore-requires-python \
    --python-version 3.12 --implementation cp "${plat[@]}" --platform manylinux2014_x86_64 \
    --platform manylinux1_x86_64 --target "$site" "$out"/whl/*.whl

# Trim. Each line: path (glob, relative to the site) and why; README.md lists them too.
trim() { local why=$1; shift; for p in "$@"; do for f in $site/$p; do
    [[ -e $f || -L $f ]] || continue
    printf '%10s  %s  (%s)\n' "$(du -sb "$f" | cut -f1)" "${f#$site/}" "$why" >>"$out/trimmed.txt"
    rm -rf "$f"; done; done; }
: >"$out/trimmed.txt"
trim "FlashAttention 3: not used with --attention-backend triton" sgl_kernel/flash_ops.abi3.so
trim "sm100 (Blackwell) kernels: the node is sm90" sgl_kernel/sm100
trim "static library, never loaded" 'xgrammar/lib' 'xgrammar/include'
trim "console scripts with this machine's interpreter path" bin
trim "tests and caches" '*/tests' '*/__pycache__'
# sgl_kernel picks sm100/ when no GPU is visible (or for cc != 90): point it at the sm90 build so
# that `import sgl_kernel` also works in a GPU-less process instead of raising ImportError.
mkdir -p "$site/sgl_kernel/sm100"
ln -s ../sm90/common_ops.abi3.so "$site/sgl_kernel/sm100/common_ops.abi3.so"
cp "$out/resolved.json" "$site/sgkit-resolved.json"
cp "$out/trimmed.txt" "$site/sgkit-trimmed.txt"

# The static import check (exit 1 stops the build). IMPORTS_PYTHON: a 3.12 interpreter, if there is one.
"${IMPORTS_PYTHON:-$py}" -W ignore "$here/imports.py" --site "$site" --resolved "$out/resolved.json" \
    --json "$out/imports.json" | tee "$out/imports.txt"

du -s --block-size=1K "$site"/* | sort -nr >"$out/sizes.txt"
echo "site: $(du -sh "$site" | cut -f1)"
rm -f "$out"/sgsite.tar.xz*
# Files sorted by suffix, then path: like content lies together, which xz compresses better.
(cd "$site" && find . -mindepth 1 \( -type f -o -type l \) -print0 |
    "$py" -c 'import sys,os; l=sys.stdin.buffer.read().split(b"\0")[:-1]; sys.stdout.buffer.write(b"\0".join(sorted(l, key=lambda p: (os.path.splitext(p)[1], p)))+b"\0")' |
    tar --null --no-recursion -T - --owner=0 --group=0 --numeric-owner -cf -) |
    xz -9 -T"${XZ_THREADS:-0}" >"$out/sgsite.tar.xz"
split -b "${part}M" -d -a 2 "$out/sgsite.tar.xz" "$out/sgsite.tar.xz.part"
(cd "$out" && sha256sum sgsite.tar.xz sgsite.tar.xz.part* >SHA256SUMS)
rm "$out/sgsite.tar.xz"
ls -l "$out"/sgsite.tar.xz.part*
echo "parts: $(ls "$out"/sgsite.tar.xz.part* | wc -l), limit ${part} MiB each"
