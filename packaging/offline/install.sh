#!/usr/bin/env bash
# Install a bundle made by make-bundle.sh on a node without a package archive: CRIU and runc run
# from the bundle through small wrappers (their libraries are the bundle's), the CUDA helper's
# client goes where rewarm looks for it, rewarm's wheels into PREFIX/site, and a node config that
# names all of it. Prints the environment to use.
#   install.sh BUNDLE [PREFIX]           (PREFIX default /opt/rewarm)
set -euo pipefail
bundle=$(cd "${1:?usage: install.sh BUNDLE [PREFIX]}" && pwd)
prefix=${2:-/opt/rewarm}
mkdir -p "$prefix/offline" "$prefix/bin" "$prefix/criu-plugins" "$prefix/site"
cp -a "$bundle/bin" "$bundle/lib" "$prefix/offline/"
cp "$bundle/plugins/"* "$prefix/criu-plugins/"
install -m 0755 "$bundle/bin/rewarm-cuda-checkpoint" "$prefix/bin/"
for tool in criu runc; do
  printf '#!/bin/sh\nLD_LIBRARY_PATH=%s/offline/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH} exec %s/offline/bin/%s "$@"\n' \
    "$prefix" "$prefix" "$tool" > "$prefix/bin/$tool"
  chmod 0755 "$prefix/bin/$tool"
done
# pip runs from its own wheel in the bundle: a node's python3 often has no pip (Debian's and
# Ubuntu's split it into a package of its own).
python3 "$(ls "$bundle"/wheels/pip-*.whl)/pip" install -q --no-index --no-deps --no-compile --upgrade \
  --disable-pip-version-check --root-user-action=ignore --target "$prefix/site" "$bundle/wheels/"*.whl
# rewarm's commands in PREFIX/bin: each runs its entry point with the bundle's packages, so that the
# commands a runtime or runc starts (rewarm-runc's engine, rewarm-hook) find them without an
# environment. rewarm-runc (sh) runs the rewarm-runc-engine beside it: this one.
install -m 0755 "$prefix/site/bin/rewarm-runc" "$prefix/bin/rewarm-runc"
for cmd in rewarm rewarm-runc-engine rewarm-hook; do
  printf '#!/bin/sh\nPYTHONPATH=%s/site${PYTHONPATH:+:$PYTHONPATH} exec python3 %s/site/bin/%s "$@"\n' \
    "$prefix" "$prefix" "$cmd" > "$prefix/bin/$cmd"
  chmod 0755 "$prefix/bin/$cmd"
done
lock="[]"
command -v iptables-restore >/dev/null || lock='["network-lock skip"]'   # no iptables: CRIU cannot lock the network
mkdir -p /etc/rewarm
# The bundle's own paths; settings of the operator's (REWARM_NODE_CONFIG, JSON) are laid over them.
python3 - "$prefix" "$lock" "${REWARM_NODE_CONFIG:-}" > /etc/rewarm/config.json.new <<'PY'
import json, sys
prefix, lock, extra = sys.argv[1], json.loads(sys.argv[2]), sys.argv[3]
config = {"runtime": f"{prefix}/bin/runc", "criu": f"{prefix}/bin/criu", "criu_plugin_dir": f"{prefix}/criu-plugins",
          "criu_options": lock}
if extra:
    with open(extra) as f:
        config.update(json.load(f))
print(json.dumps(config, indent=2))
PY
mv /etc/rewarm/config.json.new /etc/rewarm/config.json
"$prefix/bin/criu" --version | head -2
echo "export PYTHONPATH=$prefix/site PATH=$prefix/bin:$prefix/site/bin:\$PATH REWARM_CONFIG=/etc/rewarm/config.json"
