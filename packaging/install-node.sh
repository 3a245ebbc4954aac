#!/usr/bin/env bash
# Installs what a rewarm node needs on Debian 12 or 13: runc, iptables, containerd, CNI plugins and
# CRIU 4.2.1 with rewarm's parallel memory restore (packaging/criu/parallel-restore.patch) and its
# CUDA plugin, and the client of rewarm's CUDA helper. Idempotent: a second run changes nothing.
# CRIU is built from Debian's pristine upstream tarball (checksum pinned) plus the patch; the build
# directory is named by the patch's hash, so a changed patch means a new build.
#   --keep-source DIR   also keep the built source tree there (the tests run CRIU's zdtm from it)
set -euo pipefail

CRIU_WANT=4.2.1                                    # the version the patch is written for
CRIU_SHA256=29ec0ee09e296479fe7048c80980e8ef1d0684d0b0204c2b101dfea19f6725b9
PREFIX=/opt/rewarm                                 # CRIU build, plugin dir and helper client live here
HERE=$(cd "$(dirname "$0")" && pwd)
PATCH=$HERE/criu/parallel-restore.patch
PATCH_ID=$(sha256sum "$PATCH" | cut -c1-12)
CRIU_DIR=$PREFIX/criu-$CRIU_WANT-$PATCH_ID
PLUGIN_DIR=$PREFIX/criu-plugins
KEEP_SOURCE=
[ "${1:-}" = --keep-source ] && KEEP_SOURCE=${2:?--keep-source needs a directory}
APT_PACKAGES=(runc iptables containerd containernetworking-plugins busybox-static python3 python3-venv python3-dev gcc)
CRIU_BUILD_DEPS=(build-essential libprotobuf-c-dev protobuf-c-compiler protobuf-compiler
  python3-protobuf libnl-3-dev libnet1-dev libcap-dev libbsd-dev libgnutls28-dev libaio-dev
  pkg-config uuid-dev libnftables-dev libdrm-dev libprotobuf-dev xz-utils dpkg-dev)

say() { printf 'rewarm-install: %s\n' "$*"; }

apt_updated=0
apt_install() {
  local missing=()
  for p in "$@"; do dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'ok installed' || missing+=("$p"); done
  [ ${#missing[@]} -eq 0 ] && return 0
  if [ $apt_updated -eq 0 ]; then apt-get update -qq; apt_updated=1; fi
  say "installing ${missing[*]}"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}

criu_usable() {  # $1 = criu binary: rewarm's build (parallel fill), and `criu check` passes
  "$1" --version 2>/dev/null | grep -q '^Parallel-fill:' && "$1" check >/dev/null 2>&1
}

build_criu() {
  apt_install "${CRIU_BUILD_DEPS[@]}"
  local src=/etc/apt/sources.list.d/rewarm-sid-src.list
  if [ ! -f $src ]; then
    echo "deb-src http://deb.debian.org/debian sid main" > $src
    apt-get update -qq
  fi
  local work; work=$(mktemp -d)
  say "building CRIU $CRIU_WANT from Debian's source package in $work"
  # Only the upstream tarball is needed; the Debian packaging tarball may be missing from the mirror.
  local debver; debver=$(apt-cache showsrc criu | awk -v w="$CRIU_WANT" '$1=="Version:" && index($2, w"-")==1 {print $2; exit}')
  [ -n "$debver" ] || { say "CRIU $CRIU_WANT is not in Debian sid's sources"; exit 1; }
  (cd "$work" && apt-get source --download-only -qq "criu=$debver" >/dev/null 2>&1 || true)
  local tarball="$work/criu_$CRIU_WANT.orig.tar.xz"
  [ -f "$tarball" ] || { say "could not download $tarball"; exit 1; }
  echo "$CRIU_SHA256  $tarball" | sha256sum -c --quiet - || { say "CRIU tarball checksum mismatch"; exit 1; }
  tar -C "$work" -xf "$tarball"
  local tree; tree=$(find "$work" -maxdepth 1 -type d -name 'criu-*' | head -n1)
  patch -d "$tree" -p1 -s < "$PATCH"
  make -C "$tree" -j"$(nproc)" criu >/dev/null
  make -C "$tree/plugins/cuda" ARCH=x86 >/dev/null 2>&1 || say "CUDA plugin did not build (no GPU support)"
  mkdir -p "$CRIU_DIR"
  install -m 0755 "$tree/criu/criu" "$CRIU_DIR/criu"
  [ -f "$tree/plugins/cuda/cuda_plugin.so" ] && install -m 0644 "$tree/plugins/cuda/cuda_plugin.so" "$CRIU_DIR/"
  if [ -n "$KEEP_SOURCE" ]; then
    rm -rf "$KEEP_SOURCE"
    mkdir -p "$(dirname "$KEEP_SOURCE")"
    mv "$tree" "$KEEP_SOURCE"
    touch "$KEEP_SOURCE/.rewarm-$PATCH_ID"
  fi
  rm -rf "$work"
}

install_criu() {
  if [ "$(readlink -f /usr/local/sbin/criu 2>/dev/null)" = "$CRIU_DIR/criu" ] && criu_usable /usr/local/sbin/criu \
     && [ -f "$PLUGIN_DIR/cuda_plugin.so" ] && { [ -z "$KEEP_SOURCE" ] || [ -f "$KEEP_SOURCE/.rewarm-$PATCH_ID" ]; }; then
    say "CRIU $CRIU_WANT with the parallel fill already installed: /usr/local/sbin/criu -> $CRIU_DIR/criu"
    return
  fi
  if [ ! -x "$CRIU_DIR/criu" ] || { [ -n "$KEEP_SOURCE" ] && [ ! -f "$KEEP_SOURCE/.rewarm-$PATCH_ID" ]; }; then
    build_criu
  fi
  # Runtime libraries of our build (same as the build deps' runtime halves).
  apt_install libprotobuf-c1 libnl-3-200 libnet1 libbsd0 libnftables1 iproute2
  ln -sf "$CRIU_DIR/criu" /usr/local/sbin/criu
  mkdir -p "$PLUGIN_DIR"
  [ -f "$CRIU_DIR/cuda_plugin.so" ] && ln -sf "$CRIU_DIR/cuda_plugin.so" "$PLUGIN_DIR/cuda_plugin.so"
  hash -r
  criu_usable /usr/local/sbin/criu || { say "CRIU at /usr/local/sbin/criu fails 'criu check'"; exit 1; }
  say "CRIU $CRIU_WANT with the parallel fill installed: /usr/local/sbin/criu -> $CRIU_DIR/criu, plugins in $PLUGIN_DIR"
}

install_cuda_client() {  # the client of rewarm's resident CUDA helper, CRIU's `cuda-checkpoint`
  local src=$HERE/cuda-client/rewarm-cuda-checkpoint.c
  local bin=$PREFIX/bin/rewarm-cuda-checkpoint
  [ -f "$src" ] || return 0
  if [ ! -x "$bin" ] || [ "$src" -nt "$bin" ]; then
    mkdir -p "$PREFIX/bin"
    cc -O2 -Wall -o "$bin.new" "$src" && mv "$bin.new" "$bin"
    say "built $bin"
  fi
}

[ -f /etc/debian_version ] || { say "only Debian 12/13 are supported by this script"; exit 1; }
say "Debian $(cat /etc/debian_version), kernel $(uname -r)"
apt_install "${APT_PACKAGES[@]}"
install_criu
install_cuda_client
say "runc $(runc --version | awk 'NR==1 {print $3}'), containerd $(containerd --version | awk '{print $3}')"
