#!/bin/sh
# Runs in the node-installer container (privileged, host PID namespace, the host's / at /host), as
# NVIDIA's container-toolkit installer does: copy the payload onto the host, then, inside the host's
# namespaces, set up the node packages and CRIU (install-node.sh), install rewarm into
# /opt/rewarm/venv, add the rewarm handler to containerd (`rewarm install`, idempotent) and restart
# containerd only when its config changed. Then it waits, so the DaemonSet shows the node as done.
set -eu
HOST=${HOST_ROOT:-/host}
mkdir -p "$HOST/opt/rewarm/payload" "$HOST/etc/rewarm"
cp -r /payload/. "$HOST/opt/rewarm/payload/"
if [ -f /config/config.json ] && [ ! -f "$HOST/etc/rewarm/config.json" ]; then
  cp /config/config.json "$HOST/etc/rewarm/config.json"   # the operator's edits on the node win
fi
if [ -f /fingerprint-key/fingerprint.key ]; then   # the cluster's key: snapshots move between nodes
  install -m 0600 /fingerprint-key/fingerprint.key "$HOST/etc/rewarm/fingerprint.key"
fi
nsenter --target 1 --mount --uts --ipc --net --pid -- /bin/sh -eu -c '
  bash /opt/rewarm/payload/install-node.sh
  [ -x /opt/rewarm/venv/bin/python ] || python3 -m venv /opt/rewarm/venv
  /opt/rewarm/venv/bin/pip install -q --upgrade /opt/rewarm/payload/wheels/rewarm-*.whl
  if /opt/rewarm/venv/bin/rewarm install --runtime containerd | grep -q "^restart containerd"; then
    systemctl restart containerd
  fi
  /opt/rewarm/venv/bin/rewarm doctor || true
'
touch /tmp/rewarm-node-ready
echo "rewarm: node set up"
exec sleep infinity
