#!/bin/sh
# Runs in the node-installer container (privileged, host PID namespace, the host's / at /host), from
# the offline bundle the image carries (packaging/offline/make-bundle.sh). It changes only what is
# rewarm's: it copies the bundle to the host and installs it under /opt/rewarm (no package manager,
# nothing from the network; the node's containerd or CRI-O and its runc are left as they are), writes
# /etc/rewarm/config.json from the ConfigMap (authoritative: edits on the node are replaced), adds the
# `rewarm` handler to the node's own runtime config and restarts the runtime only when that changed,
# and fails the pod when any step fails. Then it runs `rewarm agent` (Kubernetes Events, /metrics,
# the node label the RuntimeClass selects) in the host's mount namespace with this pod's credentials.
#   UNINSTALL=1: the handler out again, the label off, then it waits.
#   RUNTIME_RESTART: how this node restarts its runtime (default `systemctl restart containerd`
#   or `crio`; a node whose runtime is no systemd unit of that name names its own), run on the host.
set -eu
if [ -x /payload/bin/busybox ] && [ ! -e /payload/bin/nsenter ]; then   # the image: busybox's applets as commands
  /payload/bin/busybox --install -s /payload/bin
fi
HOST=${HOST_ROOT:-/host}
PAYLOAD=$(cd "$(dirname "$0")" && pwd)
PREFIX=/opt/rewarm
fail() { echo "rewarm node-install: $*" >&2; exit 1; }
# The host's files, with the host's PATH; the pod's network reaches the API server. HOST_PID: a
# process in the host's namespaces (its init; a test names one of its own).
HOSTNS="nsenter --target ${HOST_PID:-1} --mount --uts --ipc -- /usr/bin/env PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
on_host() { $HOSTNS "$@"; }
# The agent runs in the host's mount namespace; this pod's ServiceAccount token (renewed in place by
# the kubelet) stays readable through a process that stays in the pod's: /proc/ANCHOR/root/...
anchor() { sleep 2147483647 & ANCHOR=/proc/$!/root; }

# One clear line for a node rewarm does not support.
[ -r "$HOST/etc/os-release" ] || fail "no /etc/os-release on the node: unsupported"
on_host python3 -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null \
  || fail "the node's python3 is missing or older than 3.11 (rewarm needs 3.11+): unsupported node"
[ -e "$HOST/proc/sys/kernel/ns_last_pid" ] || fail "the kernel lacks checkpoint/restore (CONFIG_CHECKPOINT_RESTORE)"
if [ -S "$HOST/run/containerd/containerd.sock" ]; then runtime=containerd
elif [ -S "$HOST/var/run/crio/crio.sock" ]; then runtime=crio
else fail "neither containerd nor CRI-O runs on the node"; fi
restart_runtime() { on_host sh -c "${RUNTIME_RESTART:-systemctl restart $runtime}" || fail "restarting $runtime failed"; }

if [ "${UNINSTALL:-}" = 1 ]; then
  out=$(on_host $PREFIX/bin/rewarm uninstall --runtime $runtime) || fail "uninstall failed: $out"
  echo "$out"
  case $out in *"restart $runtime"*) restart_runtime ;; esac
  anchor
  exec $HOSTNS $PREFIX/bin/rewarm agent --unlabel --credentials-root "$ANCHOR"
fi

rm -rf "$HOST$PREFIX/payload.new"
mkdir -p "$HOST$PREFIX" "$HOST/etc/rewarm"
cp -a "$PAYLOAD" "$HOST$PREFIX/payload.new"
rm -rf "$HOST$PREFIX/payload" && mv "$HOST$PREFIX/payload.new" "$HOST$PREFIX/payload"
if [ -f /fingerprint-key/fingerprint.key ]; then   # the cluster's key: snapshots move between nodes
  cp /fingerprint-key/fingerprint.key "$HOST/etc/rewarm/fingerprint.key.new"
  chmod 0600 "$HOST/etc/rewarm/fingerprint.key.new"
  mv "$HOST/etc/rewarm/fingerprint.key.new" "$HOST/etc/rewarm/fingerprint.key"
fi
extra=
if [ -f /config/config.json ]; then
  cp /config/config.json "$HOST/etc/rewarm/cluster.json"
  extra=/etc/rewarm/cluster.json
fi
on_host env REWARM_NODE_CONFIG=$extra bash $PREFIX/payload/install.sh $PREFIX/payload $PREFIX \
  || fail "installing the bundle under $PREFIX failed"
out=$(on_host $PREFIX/bin/rewarm install --runtime $runtime --binary $PREFIX/bin/rewarm-runc \
      --rewarm-config /etc/rewarm/config.json) || fail "rewarm install --runtime $runtime failed: $out"
echo "$out"
case $out in *"restart $runtime"*) restart_runtime ;; esac   # running pods keep running: shims outlive the daemon
on_host $PREFIX/bin/rewarm doctor || fail "rewarm doctor found a failing check (above)"
echo "rewarm: node set up"
anchor
exec $HOSTNS $PREFIX/bin/rewarm agent --label --credentials-root "$ANCHOR"
