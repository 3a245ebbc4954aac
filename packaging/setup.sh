#!/usr/bin/env bash
# Set up this machine to run thaw from this checkout: node packages and CRIU (install-node.sh),
# Podman (for the tests), a Python venv in .venv with thaw and its test dependencies, thaw's
# protobuf modules, and torch + transformers for the LLM worker's containers. Idempotent.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
cd "$here"
bash packaging/install-node.sh
# Podman: the tests drive it (hooks.d, checkpoint archives); a thaw node does not need it.
if ! command -v podman >/dev/null; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get install -y -qq --no-install-recommends podman >/dev/null \
    || { apt-get update -qq && apt-get install -y -qq --no-install-recommends podman >/dev/null; }
  echo "thaw-setup: installed podman"
fi
if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv
  echo "thaw-setup: created .venv"
fi
if ! .venv/bin/python -c "import runtime.shim, jsonschema, pytest, psutil, grpc, grpc_tools, tomlkit, zstandard" 2>/dev/null \
   || [ pyproject.toml -nt .venv/.thaw-installed ]; then
  .venv/bin/pip install -q --upgrade pip
  .venv/bin/pip install -q -e '.[test]' --config-settings editable_mode=compat
  touch .venv/.thaw-installed
  echo "thaw-setup: installed thaw into .venv ($(.venv/bin/python --version))"
else
  echo "thaw-setup: .venv up to date"
fi
.venv/bin/python -m runtime.api.generate   # CRI / containerd protobuf modules from runtime/api/*.proto
.venv/bin/python examples/llm-worker/deps.py   # torch + transformers for the LLM worker's containers
