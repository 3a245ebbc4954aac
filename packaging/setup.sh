#!/usr/bin/env bash
# Set up this machine to run rewarm from this checkout: node packages and CRIU (install-node.sh),
# Podman (for the tests), a Python venv in .venv with rewarm and its test dependencies, rewarm's
# protobuf modules, and torch + transformers for the LLM worker's containers. Idempotent.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
cd "$here"
# The tests run CRIU's own zdtm suite against the patched build: keep its source tree.
bash packaging/install-node.sh --keep-source /opt/rewarm/criu-src
# CRIU's zdtm harness in the kept tree, for tests/system/test_criu_zdtm.py: zdtm-keep-root.patch,
# pycriu's image modules (zdtm.py imports them), zdtm's own library and helpers. zdtm.py then builds
# only the tests it runs (without libzdtmtst.a it would build all of them, some of which need more
# libraries than a node has). install-node.sh replaces the tree, and the marker, when CRIU changes.
ZDTM=/opt/rewarm/criu-src
if [ ! -f $ZDTM/.zdtm-ready ]; then
  if patch -d $ZDTM -p1 -N -s --dry-run < packaging/criu/zdtm-keep-root.patch >/dev/null 2>&1; then
    patch -d $ZDTM -p1 -N -s < packaging/criu/zdtm-keep-root.patch
  fi
  make -C $ZDTM -j"$(nproc)" lib >/dev/null
  make -C $ZDTM/test/zdtm/lib -j"$(nproc)" >/dev/null
  make -C $ZDTM/test umount2 zdtm_ct >/dev/null
  touch $ZDTM/.zdtm-ready
  echo "rewarm-setup: zdtm prepared in $ZDTM"
fi
# For the tests only (a rewarm node needs none of them): Podman (hooks.d, checkpoint archives and
# images), Docker's engine and Debian's OCI registry (run through testcontainers by
# runtime/lab/registry_lab.py, which starts a private dockerd), htpasswd and openssl (its login and TLS),
# skopeo (it decrypts what rewarm encrypts), patchelf (make-bundle.sh points the bundle's binaries at
# its own loader), debootstrap (tests/system/throwaway_node.py makes a Debian 11 node's userland) and
# nginx (tests/system/test_vllm_proxy.py runs the vLLM example's proxy; its service is not left running).
missing=""
for tool in podman:podman dockerd:docker.io docker-registry:docker-registry htpasswd:apache2-utils openssl:openssl skopeo:skopeo \
            patchelf:patchelf debootstrap:debootstrap nginx:nginx-light; do
  command -v "${tool%%:*}" >/dev/null || missing="$missing ${tool#*:}"
done
if [ -n "$missing" ]; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get install -y -qq --no-install-recommends $missing >/dev/null \
    || { apt-get update -qq && apt-get install -y -qq --no-install-recommends $missing >/dev/null; }
  echo "rewarm-setup: installed$missing"
  case "$missing" in *nginx*) systemctl disable --now nginx >/dev/null 2>&1 || service nginx stop >/dev/null 2>&1 || true;; esac
fi
# containerd 2.x for the tests (the CRI tests run against it and against the distribution's 1.6/1.7):
# Debian sid's package unpacked into a private folder, without adding sid to apt's sources. Its
# binaries need only libc, so they run on Debian 12 too. runtime/lab/containerd_lab.py names the folder.
CONTAINERD_SID=/opt/rewarm/containerd-sid
if [ ! -x $CONTAINERD_SID/usr/bin/containerd ]; then
  work=$(mktemp -d)
  echo "deb http://deb.debian.org/debian sid main" > "$work/sources.list"
  mkdir -p "$work/lists/partial"
  apt_private=(-o "Dir::Etc::SourceList=$work/sources.list" -o Dir::Etc::SourceParts=/dev/null
               -o "Dir::State::Lists=$work/lists" -o Debug::NoDropPrivs=1)
  apt-get -qq "${apt_private[@]}" update
  (cd "$work" && apt-get -qq "${apt_private[@]}" download containerd 2>/dev/null)
  dpkg -x "$work"/containerd_*.deb "$CONTAINERD_SID"
  rm -rf "$work"
  echo "rewarm-setup: containerd $($CONTAINERD_SID/usr/bin/containerd --version | awk '{print $3}') in $CONTAINERD_SID"
fi
$CONTAINERD_SID/usr/bin/containerd --version | grep -q ' v\?2\.\| 2\.' \
  || { echo "rewarm-setup: $CONTAINERD_SID does not hold containerd 2.x"; exit 1; }
# promtool for the tests of the monitoring manifests (packaging/kubernetes/monitoring: their PromQL
# checked offline): the binary alone from Debian's prometheus package, unpacked without installing
# it, so no Prometheus server is set up, started or bound to a port.
PROMTOOL_DIR=/opt/rewarm/promtool
if [ ! -x $PROMTOOL_DIR/promtool ]; then
  work=$(mktemp -d)
  (cd "$work" && { apt-get -qq -o Debug::NoDropPrivs=1 download prometheus 2>/dev/null \
                   || { apt-get update -qq && apt-get -qq -o Debug::NoDropPrivs=1 download prometheus; }; })
  dpkg -x "$work"/prometheus_*.deb "$work/unpacked"
  install -D -m 0755 "$work/unpacked/usr/bin/promtool" $PROMTOOL_DIR/promtool
  rm -rf "$work"
  echo "rewarm-setup: $($PROMTOOL_DIR/promtool --version 2>&1 | head -1) in $PROMTOOL_DIR"
fi
if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv
  echo "rewarm-setup: created .venv"
fi
if ! .venv/bin/python -c "import runtime.front.runc_argv, runtime.engine.formats, jsonschema, pytest, psutil, grpc, grpc_tools, tomlkit, zstandard, importlinter, mypy, oras, kubernetes_validate, testcontainers, prometheus_client, jwcrypto, cryptography, shtab, tqdm" 2>/dev/null \
   || [ pyproject.toml -nt .venv/.rewarm-installed ] || [ packaging/bin/rewarm-runc -nt .venv/.rewarm-installed ]; then
  .venv/bin/pip install -q --upgrade pip
  .venv/bin/pip install -q -e '.[test]' --config-settings editable_mode=compat
  touch .venv/.rewarm-installed
  echo "rewarm-setup: installed rewarm into .venv ($(.venv/bin/python --version))"
else
  echo "rewarm-setup: .venv up to date"
fi
.venv/bin/python -m runtime.clients.api.generate   # CRI / containerd protobuf modules from runtime/clients/api/*.proto
.venv/bin/python examples/llm-worker/deps.py   # torch + transformers for the LLM worker's containers
.venv/bin/python tests/system/workers/engine_tree/engine_site.py   # uvicorn, uvloop, pyzmq for the engine stand-in's containers
