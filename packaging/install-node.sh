#!/usr/bin/env bash
# Installs what a rewarm node needs on Debian 12 or 13: runc, iptables, containerd, CNI plugins and
# CRIU >= 4.2 with its CUDA plugin. Idempotent: a second run changes nothing and says so.
# CRIU is built from Debian's source package when the distribution's CRIU is too old or fails
# `criu check` (bookworm's 3.17 dies on new kernels, trixie's 4.1 cannot dump inet sockets).
set -euo pipefail

CRIU_MIN=4.2
CRIU_WANT=${REWARM_CRIU_VERSION:-4.2.1}          # the version we build when we must build
PREFIX=${REWARM_PREFIX:-/opt/rewarm}                 # CRIU build + plugin dir live here
CRIU_SHA256=${REWARM_CRIU_SHA256:-29ec0ee09e296479fe7048c80980e8ef1d0684d0b0204c2b101dfea19f6725b9}
CRIU_DIR=$PREFIX/criu-$CRIU_WANT
PLUGIN_DIR=$PREFIX/criu-plugins
APT_PACKAGES=(runc iptables containerd containernetworking-plugins busybox-static python3 python3-venv python3-dev gcc)
CRIU_BUILD_DEPS=(build-essential libprotobuf-c-dev protobuf-c-compiler protobuf-compiler
  python3-protobuf libnl-3-dev libnet1-dev libcap-dev libbsd-dev libgnutls28-dev libaio-dev
  pkg-config uuid-dev libnftables-dev libdrm-dev libprotobuf-dev xz-utils dpkg-dev)

say() { printf 'rewarm-install: %s\n' "$*"; }
version_ge() { [ "$(printf '%s\n%s\n' "$2" "$1" | sort -V | head -n1)" = "$2" ]; }

apt_updated=0
apt_install() {
  local missing=()
  for p in "$@"; do dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'ok installed' || missing+=("$p"); done
  [ ${#missing[@]} -eq 0 ] && return 0
  if [ $apt_updated -eq 0 ]; then apt-get update -qq; apt_updated=1; fi
  say "installing ${missing[*]}"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}

criu_usable() {  # $1 = criu binary
  local v
  v=$("$1" --version 2>/dev/null | awk '/^Version:/ {print $2}') || return 1
  [ -n "$v" ] && version_ge "$v" "$CRIU_MIN" && "$1" check >/dev/null 2>&1
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
  make -C "$tree" -j"$(nproc)" criu >/dev/null
  make -C "$tree/plugins/cuda" ARCH=x86 >/dev/null 2>&1 || say "CUDA plugin did not build (no GPU support)"
  mkdir -p "$CRIU_DIR"
  install -m 0755 "$tree/criu/criu" "$CRIU_DIR/criu"
  [ -f "$tree/plugins/cuda/cuda_plugin.so" ] && install -m 0644 "$tree/plugins/cuda/cuda_plugin.so" "$CRIU_DIR/"
  rm -rf "$work"
}

install_criu() {
  if command -v criu >/dev/null && criu_usable "$(command -v criu)" && [ -f "$PLUGIN_DIR/cuda_plugin.so" ]; then
    say "CRIU $(criu --version | awk '/^Version:/ {print $2}') already usable: $(command -v criu)"
    return
  fi
  if [ ! -x "$CRIU_DIR/criu" ]; then
    build_criu
  fi
  # Runtime libraries of our build (same as the build deps' runtime halves).
  apt_install libprotobuf-c1 libnl-3-200 libnet1 libbsd0 libnftables1 iproute2
  ln -sf "$CRIU_DIR/criu" /usr/local/sbin/criu
  mkdir -p "$PLUGIN_DIR"
  [ -f "$CRIU_DIR/cuda_plugin.so" ] && ln -sf "$CRIU_DIR/cuda_plugin.so" "$PLUGIN_DIR/cuda_plugin.so"
  hash -r
  criu_usable /usr/local/sbin/criu || { say "CRIU at /usr/local/sbin/criu fails 'criu check'"; exit 1; }
  say "CRIU $CRIU_WANT installed: /usr/local/sbin/criu, plugins in $PLUGIN_DIR"
}

install_cuda_client() {  # the client of rewarm's resident CUDA helper, CRIU's `cuda-checkpoint`
  local src; src=$(dirname "$0")/cuda-client/rewarm-cuda-checkpoint.c
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
