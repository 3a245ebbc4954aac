#!/bin/sh
# Runs in the node-installer container (privileged, host PID namespace, the host's / at /host) under
# the bundle's static busybox sh, from the offline bundle the image carries
# (packaging/offline/make-bundle.sh). It changes only what is rewarm's: it copies the bundle to the
# host and installs it under /opt/rewarm (no package manager, nothing from the network; the node's
# containerd or CRI-O and its runc are left as they are), writes /etc/rewarm/config.json from the
# ConfigMap (authoritative: edits on the node are replaced), adds the `rewarm` handler to the node's
# own runtime config and restarts the runtime only when that changed, and fails the pod when any
# step fails, after taking the node's ready label off. Then it runs `rewarm agent` (Kubernetes
# Events, /metrics, the node label the RuntimeClass selects) in the host's mount namespace with this
# pod's credentials. On the host it runs only the bundle's programs (its busybox for a shell, its
# python3 for rewarm), never the node's sh, bash or python3, and the runtime's restart command.
#   UNINSTALL=1: the handler out again, the label off, then it waits.
#   RUNTIME_RESTART: how this node restarts its runtime (default: the command `rewarm install` prints,
#   from the unit the node has: containerd, crio, k3s/k3s-agent, rke2-server/rke2-agent, k0sworker).
#   GPU_OPERATOR_WAIT_S: how long to wait for NVIDIA's GPU Operator's container toolkit (default 600).
set -eu
HOST=${HOST_ROOT:-/host}
PAYLOAD=$(cd "$(dirname "$0")" && pwd)
RELEASE=$(cat "$PAYLOAD/release")   # /opt/rewarm/bundle-...: where the bundle's binaries find their loader
PREFIX=${RELEASE%/*}
# The host's files, with the host's PATH; the pod's network reaches the API server. HOST_PID: a
# process in the host's namespaces (its init; a test names one of its own). The bundle's busybox, on
# the host once copied there, is the shell and env of everything run there.
HOSTNS="nsenter --target ${HOST_PID:-1} --mount --uts --ipc -- $RELEASE/bin/busybox env PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
on_host() { $HOSTNS "$@"; }
# The agent runs in the host's mount namespace; this pod's ServiceAccount token (renewed in place by
# the kubelet) stays readable through a process that stays in the pod's: /proc/ANCHOR/root/...
anchor() { [ -n "${ANCHOR:-}" ] || { sleep 2147483647 & ANCHOR=/proc/$!/root; }; }
# A failed step: the ready label off first (one bounded try, where rewarm runs on the host), so that
# no rewarm pod is scheduled here meanwhile, then one line and a failed pod.
fail() {
  if [ -L "$HOST$PREFIX/bin/rewarm" ]; then   # (a link to a path of the host's, not to be followed here)
    anchor
    on_host $PREFIX/bin/rewarm agent --unlabel --once --api-timeout 10 --credentials-root "$ANCHOR" >&2 \
      || echo "rewarm node-install: the label rewarm.dev/runtime could not be taken off" >&2
  fi
  echo "rewarm node-install: $*" >&2
  exit 1
}

# One clear line for a node rewarm does not support. Nothing of the node's userland is needed.
[ -r "$HOST/etc/os-release" ] || fail "no /etc/os-release on the node: unsupported"
[ -e "$HOST/proc/sys/kernel/ns_last_pid" ] || fail "the kernel lacks checkpoint/restore (CONFIG_CHECKPOINT_RESTORE)"
[ "$(uname -m)" = x86_64 ] || fail "the node is $(uname -m); the bundle is built for x86_64"
# k3s, RKE2 and k0s run a containerd of their own (checked first: a node may also run Docker's).
if [ -S "$HOST/run/k3s/containerd/containerd.sock" ] && [ -d "$HOST/var/lib/rancher/rke2/agent/etc/containerd" ]; then runtime=rke2
elif [ -S "$HOST/run/k3s/containerd/containerd.sock" ]; then runtime=k3s
elif [ -S "$HOST/run/k0s/containerd.sock" ]; then runtime=k0s
elif [ -S "$HOST/run/containerd/containerd.sock" ]; then runtime=containerd
elif [ -S "$HOST/var/run/crio/crio.sock" ]; then runtime=crio
else fail "no containerd (plain, k3s, RKE2, k0s) nor CRI-O runs on the node"; fi
# `rewarm install` and `uninstall` end with `restart NAME to (un)load it: CMD` when the runtime must
# restart: CMD is the unit this node really has (k3s-agent, rke2-server, k0sworker, containerd, crio).
restart_runtime() {
  cmd=$(printf '%s\n' "$1" | sed -n 's/^restart [^ ]* to \(un\)\{0,1\}load it: //p')
  on_host sh -c "${RUNTIME_RESTART:-${cmd:-systemctl restart $runtime}}" || fail "restarting $runtime failed"
}

# The bundle onto the host, once: its place is named by its contents.
if [ ! -d "$HOST$RELEASE" ]; then
  mkdir -p "$HOST$PREFIX"
  rm -rf "$HOST$RELEASE.new"
  cp -a "$PAYLOAD" "$HOST$RELEASE.new" || fail "copying the bundle to $RELEASE failed"
  mv "$HOST$RELEASE.new" "$HOST$RELEASE"
fi

if [ "${UNINSTALL:-}" = 1 ]; then
  out=$(on_host $PREFIX/bin/rewarm uninstall --runtime $runtime) || fail "uninstall failed: $out"
  echo "$out"
  case $out in *"restart "*" to unload it"*) restart_runtime "$out" ;; esac
  anchor
  exec $HOSTNS $PREFIX/bin/rewarm agent --unlabel --credentials-root "$ANCHOR"
fi

# NVIDIA's GPU Operator rewrites the runtime's config when its container toolkit starts, and says
# when it is done (toolkit-ready): rewarm's handler goes in after that, chained to its runtime.
validations=$HOST/run/nvidia/validations
if [ -d "$validations" ] && [ ! -e "$validations/toolkit-ready" ]; then
  echo "rewarm node-install: waiting for NVIDIA's container toolkit (/run/nvidia/validations/toolkit-ready)"
  waited=0
  until [ -e "$validations/toolkit-ready" ]; do
    [ "$waited" -lt "${GPU_OPERATOR_WAIT_S:-600}" ] \
      || fail "the GPU Operator's container toolkit was not ready after ${waited}s (no /run/nvidia/validations/toolkit-ready; a node the Operator left keeps that folder until it restarts)"
    sleep 1
    waited=$((waited + 1))
  done
fi

mkdir -p "$HOST/etc/rewarm"
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
on_host env REWARM_NODE_CONFIG=$extra sh $RELEASE/install.sh $RELEASE || fail "installing the bundle under $PREFIX failed"
out=$(on_host $PREFIX/bin/rewarm install --runtime $runtime --binary $PREFIX/bin/rewarm-runc \
      --rewarm-config /etc/rewarm/config.json) || fail "rewarm install --runtime $runtime failed: $out"
echo "$out"
case $out in *"restart "*" to load it"*) restart_runtime "$out" ;; esac   # running pods keep running: shims outlive the daemon
on_host $PREFIX/bin/rewarm doctor || fail "rewarm doctor found a failing check (above)"
echo "rewarm: node set up"
anchor
exec $HOSTNS $PREFIX/bin/rewarm agent --label --credentials-root "$ANCHOR"
