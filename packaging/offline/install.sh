# Install a bundle made by make-bundle.sh on a node, with the bundle's own shell (nothing of the
# node's userland runs: not its sh, not its python3):
#   BUNDLE/bin/sh BUNDLE/install.sh BUNDLE
# The bundle goes to the one place it is built for, /opt/rewarm/bundle-VERSION-HASH (its file
# `release` names it; its loader's path is written into its binaries), unless it is there already;
# it is never edited in place. /opt/rewarm/bin then names its commands (each link replaced by a
# rename, so a runtime calling rewarm-runc meanwhile finds the old one or the new one), the node
# config /etc/rewarm/config.json names its runc, CRIU and CUDA plugin, and bundles older than the
# previous one are removed. Prints the environment to use.
set -eu
bundle=$(cd "${1:?usage: BUNDLE/bin/sh BUNDLE/install.sh BUNDLE}" && pwd -P)
release=$(cat "$bundle/release")
prefix=${release%/*}
if [ "$bundle" != "$release" ] && [ ! -d "$release" ]; then
  mkdir -p "$prefix"
  rm -rf "$release.new"
  cp -a "$bundle" "$release.new"
  mv "$release.new" "$release"
fi
mkdir -p "$prefix/bin"
previous=$(readlink "$prefix/bin/rewarm-runc" 2>/dev/null || true)
previous=${previous%/bin/rewarm-runc}
for cmd in rewarm rewarm-runc rewarm-runc-engine rewarm-hook python3 criu runc rewarm-cuda-checkpoint sh; do
  ln -sfn "$release/bin/$cmd" "$prefix/bin/.$cmd.new"
  mv -f "$prefix/bin/.$cmd.new" "$prefix/bin/$cmd"
done
lock="[]"
command -v iptables-restore >/dev/null || lock='["network-lock skip"]'   # no iptables: CRIU cannot lock the network
mkdir -p /etc/rewarm
# The bundle's own paths; settings of the operator's (REWARM_NODE_CONFIG, JSON) are laid over them.
"$release/bin/python3" -I - "$prefix" "$release" "$lock" "${REWARM_NODE_CONFIG:-}" > /etc/rewarm/config.json.new <<'PY'
import json, sys
prefix, release, lock, extra = sys.argv[1], sys.argv[2], json.loads(sys.argv[3]), sys.argv[4]
config = {"runtime": f"{prefix}/bin/runc", "criu": f"{prefix}/bin/criu", "criu_plugin_dir": f"{release}/criu-plugins",
          "criu_options": lock}
if extra:
    with open(extra) as f:
        config.update(json.load(f))
print(json.dumps(config, indent=2))
PY
mv /etc/rewarm/config.json.new /etc/rewarm/config.json
for old in "$prefix"/bundle-*; do   # running containers may still use the previous bundle's files
  case $old in "$release"|"$previous") ;; *) rm -rf "$old" ;; esac
done
"$prefix/bin/criu" --version | head -2
echo "export PATH=$prefix/bin:\$PATH REWARM_CONFIG=/etc/rewarm/config.json"
