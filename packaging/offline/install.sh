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
python3 -m pip install -q --no-index --no-deps --no-compile --upgrade --target "$prefix/site" "$bundle/wheels/"*.whl
lock="[]"
command -v iptables-restore >/dev/null || lock='["network-lock skip"]'   # no iptables: CRIU cannot lock the network
mkdir -p /etc/rewarm
cat > /etc/rewarm/config.json <<JSON
{"runtime": "$prefix/bin/runc", "criu": "$prefix/bin/criu", "criu_plugin_dir": "$prefix/criu-plugins",
 "criu_options": $lock}
JSON
"$prefix/bin/criu" --version | head -2
echo "export PYTHONPATH=$prefix/site PATH=$prefix/site/bin:\$PATH REWARM_CONFIG=/etc/rewarm/config.json"
