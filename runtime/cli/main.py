"""`rewarm`: the operator's command line. Flag definitions and printing only; the work is elsewhere."""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
from typing import TYPE_CHECKING, Iterator

import shtab

from runtime.host import settings_file
from runtime.front.names import CONFIG_ENV, DEFAULT_CONFIG
from runtime.model.errors import RewarmError
from runtime.model.settings import Settings

if TYPE_CHECKING:
    from runtime.node.install import Outcome
    from runtime.snapshot.store import Entry


SIZE_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}


def parse_size(text: str) -> int:
    """A byte count: 1073741824, 1024M, 10G, 1.5T, 10GiB (binary units: 1G = 2**30 bytes)."""
    value = text.strip().upper().removesuffix("B").removesuffix("I")
    number, unit = (value[:-1], value[-1]) if value[-1:] in "KMGT" and value[-1:] else (value, "")
    try:
        n = float(number)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a size (like 10G, 512M or 1073741824)") from None
    if n < 0:
        raise argparse.ArgumentTypeError(f"{text!r}: a size is not negative")
    return int(n * SIZE_UNITS[unit])


def _size(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024:
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1024
    return f"{n:.1f} TiB"


def cmd_capture(cfg: Settings, a: argparse.Namespace) -> int:
    from runtime.engine import capture
    if a.containerd:
        from runtime.clients.containerd import Containerd
        with Containerd(a.address, a.namespace or "k8s.io") as containerd:
            found = containerd.container(a.container_id)   # asked once: its runc root and image
            entry = capture.run(cfg, capture.Request(found.runc_root, a.container_id, a.name, a.snapshot_namespace,
                                                     leave_running=not a.exit, containerd=containerd,
                                                     image_digest=containerd.image_digest(found.image)))
    else:
        entry = capture.capture(cfg, a.root, a.container_id, a.name, a.snapshot_namespace or a.namespace,
                                a.leave_running)
    print(f"captured {entry.namespace}/{entry.name} ({_size(entry.size())}, "
          f"{entry.manifest.capture.seconds}s) -> {entry.path}")
    return 0


def cmd_ls(cfg: Settings, a: argparse.Namespace) -> int:
    from runtime.snapshot import store
    entries, broken = store.Store(cfg.store).everything()
    if a.json:
        print(json.dumps([{"namespace": e.namespace, "name": e.name, "entry": e.ident, "bytes": e.size(),
                           "created": e.manifest.created, "image": e.manifest.fingerprint.image}
                          for e in entries] + [{"path": b.path, "broken": b.reason} for b in broken], indent=2))
        return 0
    print(f"{'NAMESPACE':<16} {'NAME':<24} {'SIZE':>10}  {'CREATED':<20}  ENTRY")
    for e in entries:
        print(f"{e.namespace:<16} {e.name:<24} {_size(e.size()):>10}  {e.manifest.created:<20}  {e.ident}")
    for b in broken:   # `rewarm gc` removes them
        ns, name = os.path.relpath(b.path, os.path.join(cfg.store, "snapshots")).split(os.sep)[:2]
        print(f"{ns:<16} {name:<24} {'BROKEN':>10}  {'':<20}  {b.ident}: {b.reason}")
    return 0


def _entries(cfg: Settings, a: argparse.Namespace) -> "list[Entry]":
    """The entries of the snapshot `a` names, newest first; none: says so on stderr."""
    from runtime.snapshot import store
    entries = store.Store(cfg.store).entries(a.namespace, a.name)
    if not entries:
        print(f"no snapshot {a.namespace}/{a.name}", file=sys.stderr)
    return entries


def cmd_inspect(cfg: Settings, a: argparse.Namespace) -> int:
    entries = _entries(cfg, a)
    if not entries:
        return 1
    print(json.dumps([{"path": e.path, "manifest": e.manifest.to_json()} for e in entries], indent=2))
    return 0


def cmd_rm(cfg: Settings, a: argparse.Namespace) -> int:
    from runtime.snapshot import store
    n = store.Store(cfg.store).remove(a.namespace, a.name)
    if not n:
        print(f"rewarm rm: no snapshot {a.namespace}/{a.name}", file=sys.stderr)
        return 1
    print(f"removed {n} entr{'y' if n == 1 else 'ies'} of {a.namespace}/{a.name}")
    return 0


def cmd_warm(cfg: Settings, a: argparse.Namespace) -> int:
    from runtime.engine import warm
    entries = _entries(cfg, a)
    if not entries:
        return 1
    from runtime.observe.progress import Progress
    done = warm.warm(entries[0], a.threads or cfg.restore_threads, Progress("warm", warm.size(entries[0])))
    size = entries[0].size()
    print(f"warmed {a.namespace}/{a.name}: {_size(done.bytes_read)} read in {done.seconds:.2f}s "
          f"({done.bytes_read / max(done.seconds, 1e-9) / 1e9:.2f} GB/s); resident "
          f"{100 * done.resident_before / max(size, 1):.0f}% before, {100 * done.resident_after / max(size, 1):.0f}% now")
    for why in done.left_out:
        print(f"  left out {why}")
    return 0


def cmd_gc(cfg: Settings, a: argparse.Namespace) -> int:
    from runtime.snapshot import store
    for path in store.Store(cfg.store).gc(a.max_bytes):
        print(f"removed {path}")
    return 0


def _print_outcome(outcome: Outcome, dry_run: bool, unchanged: str, verb: str) -> None:
    """What install / uninstall did, file by file, then how to make the runtime load it."""
    print(f"runtime: {outcome.runtime}" + (f" (socket {outcome.socket})" if outcome.socket else ""))
    for d in outcome.done:
        if not d.changed:
            print(f"{d.path}: {unchanged}")
            continue
        print(d.diff, end="")
        through = f" (through the link: {d.written})" if d.written else ""
        if dry_run:
            print(f"(dry run: {d.path} not written)")
        elif os.path.lexists(d.path):
            print(f"wrote {d.path}{through}" + (f" (previous version kept as {d.backup})" if d.backup else ""))
        else:
            print(f"removed {d.path}")
    for note in outcome.notes:
        print(f"note: {note}")
    if outcome.restart:
        print(f"restart {outcome.runtime} to {verb} it: {outcome.restart}")


def cmd_install(cfg: Settings, a: argparse.Namespace) -> int:
    from runtime.node import install
    from runtime.snapshot import store
    node = install.Node(a.config_file, a.binary, a.hooks_dir, a.rewarm_config, a.containerd)
    _print_outcome(install.install(a.runtime, node, a.config_version, a.dry_run), a.dry_run,
                   "already installed; nothing to change", "load")
    if not a.dry_run:   # the store root-only before any snapshot lands there, whoever made the directory
        node_store = store.Store(cfg.store)
        try:
            repaired = node_store.repair_mode()
            node_store.ensure()
        except OSError as e:   # doctor, which runs next, says what is wrong with it
            print(f"rewarm install: the store {cfg.store} could not be set up: {e}", file=sys.stderr)
        else:
            if repaired:
                print(repaired)
    return 0


def cmd_uninstall(cfg: Settings, a: argparse.Namespace) -> int:
    from runtime.node import install
    node = install.Node(a.config_file, hooks_dir=a.hooks_dir, containerd=a.containerd)
    _print_outcome(install.uninstall(a.runtime, node, a.dry_run), a.dry_run, "nothing of rewarm's there", "unload")
    return 0


def cmd_import(cfg: Settings, a: argparse.Namespace) -> int:
    from runtime.engine import archives
    cfg = dataclasses.replace(cfg, decryption_keys=(*cfg.decryption_keys, *a.decryption_key))
    entry = archives.import_any(cfg, a.archive, a.name, a.namespace)
    print(f"imported {a.archive} as {entry.namespace}/{entry.name} ({_size(entry.size())}) -> {entry.path}")
    return 0


def cmd_export(cfg: Settings, a: argparse.Namespace) -> int:
    from runtime.engine import archives
    cfg = dataclasses.replace(cfg, encrypt_recipients=(*cfg.encrypt_recipients, *a.encrypt_to))
    entry = archives.export_archive(cfg, a.name, a.namespace, a.archive)
    print(f"exported {entry.namespace}/{entry.name} ({entry.ident}) -> {a.archive}")
    return 0


def _plain_http(cfg: Settings, a: argparse.Namespace) -> Settings:
    """--plain-http: this one registry is spoken to without TLS (the client refuses it off loopback)."""
    if not a.plain_http:
        return cfg
    from runtime.model import registry_ref
    registry = registry_ref.parse(a.ref).registry
    return dataclasses.replace(cfg, plain_http_registries=(*cfg.plain_http_registries, registry))


def cmd_push(cfg: Settings, a: argparse.Namespace) -> int:
    from runtime.engine import push
    cfg = dataclasses.replace(_plain_http(cfg, a), encrypt_recipients=(*cfg.encrypt_recipients, *a.encrypt_to),
                              sign_key_file=a.sign_key or cfg.sign_key_file)
    done = push.push(cfg, a.name, a.ref, a.namespace, a.format)
    print(f"pushed {done.entry.namespace}/{done.entry.name} ({done.entry.ident}) -> {done.ref}@{done.digest}: "
          f"{done.progress.summary()}")
    return 0


def cmd_pull(cfg: Settings, a: argparse.Namespace) -> int:
    from runtime.engine import pull
    cfg = dataclasses.replace(_plain_http(cfg, a), decryption_keys=(*cfg.decryption_keys, *a.decryption_key),
                              signature_keys=(*cfg.signature_keys, *a.verify_key),
                              require_signature=cfg.require_signature or bool(a.verify_key))
    done = pull.pull(cfg, a.ref, a.name, a.namespace, a.format)
    entry = done.entry
    if done.progress is None:
        print(f"{a.ref} ({done.digest}) is already {entry.namespace}/{entry.name} -> {entry.path}")
    else:
        print(f"pulled {a.ref} ({done.digest}) as {entry.namespace}/{entry.name} ({_size(entry.size())}): "
              f"{done.progress.summary()} -> {entry.path}")
    return 0


def cmd_bake(cfg: Settings, a: argparse.Namespace) -> int:
    from runtime.observe.progress import Phases
    from runtime.engine import bake
    command = a.command[1:] if a.command[:1] == ["--"] else a.command
    env = tuple((k, v) for k, v in (item.split("=", 1) for item in a.env))
    job = bake.Bake(image=a.image, name=a.name, namespace=a.namespace, command=tuple(command), env=env,
                    ready_file=a.ready_file, ready_http=a.ready_http, timeout=a.timeout, handler=a.handler)
    entry = bake.bake(cfg, a.address, job, Phases("bake"))
    print(f"baked {entry.namespace}/{entry.name} ({_size(entry.size())}) -> {entry.path}")
    return 0


def cmd_doctor(cfg: Settings, a: argparse.Namespace) -> int:
    from runtime.node import doctor
    return doctor.run(cfg, as_json=a.json)


def _event_line(e: dict[str, object]) -> str:
    """One event as a person reads it: time, kind, where, then what it says."""
    where = "/".join(str(e[k]) for k in ("namespace", "pod") if e.get(k)) or str(e.get("container", ""))[:12]
    said = [f"{k}={e[k]}" for k in ("snapshot", "seconds", "entry", "ref", "reason", "outcome") if e.get(k) not in
            (None, "")]
    return f"{str(e.get('time', ''))[:23]}  {str(e.get('event', '')):<15} {where:<32} {' '.join(said)}"


def cmd_events(cfg: Settings, a: argparse.Namespace) -> int:
    from collections import deque

    from runtime.observe import logs

    def wanted(e: dict[str, object]) -> bool:
        return (not a.pod or e.get("pod") == a.pod or e.get("container") == a.pod) \
            and (not a.namespace or e.get("namespace") == a.namespace) and (not a.kind or e.get("event") in a.kind)
    shown = list(deque(filter(wanted, logs.iter_events(cfg.event_log)), maxlen=a.last)) if a.last > 0 else []
    events = iter(shown) if not a.follow else _chain(shown, filter(wanted, logs.follow_events(cfg.event_log)))
    try:
        for e in events:
            print(json.dumps(e, sort_keys=True) if a.json else _event_line(e), flush=True)
    except KeyboardInterrupt:
        pass
    return 0


def _chain(first: list[dict[str, object]], then: Iterator[dict[str, object]]) -> Iterator[dict[str, object]]:
    yield from first
    yield from then


def _positive_seconds(text: str) -> float:
    try:
        seconds = float(text)
    except ValueError:
        seconds = 0.0
    if not 0 < seconds < 3600:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds above 0 (and below 3600)")
    return seconds


def cmd_agent(cfg: Settings, a: argparse.Namespace) -> int:
    import socket
    from runtime.node import agent
    node = a.node or os.environ.get("NODE_NAME") or socket.gethostname()
    api = agent.connect(a.kubeconfig, a.credentials_root, a.api_timeout)
    label = agent.Label.SET if a.label else agent.Label.REMOVE if a.unlabel else None
    if a.once:   # the label alone, one bounded try: the node installer takes it off before its pod fails
        if label is None:
            print("rewarm agent: --once needs --label or --unlabel", file=sys.stderr)
            return 2
        try:
            api.label(node, label is agent.Label.SET)
        except agent.ApiFailure as e:
            print(f"rewarm agent: node {node} label not changed: {e}", file=sys.stderr)
            return 1
        print(f"rewarm agent: node {node} {'labelled' if label is agent.Label.SET else 'unlabelled'} {agent.NODE_LABEL}")
        return 0
    agent.run(cfg.event_log, api, agent.Options(node, a.metrics_port, label, store=cfg.store))
    return 0


def cmd_demo(cfg: Settings, a: argparse.Namespace) -> int:
    from runtime.lab import demo, runc_lab
    if not os.path.isdir(runc_lab.WORKER_DIR):
        print(f"rewarm demo: runs from a checkout of rewarm (it builds its worker from examples/warm-worker); "
              f"{runc_lab.WORKER_DIR} is not here", file=sys.stderr)
        return 2
    return demo.run(cfg, warm_seconds=a.warm_seconds)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="rewarm", description="Capture and restore warmed-up inference workers.")
    p.add_argument("--version", action="version", version=f"rewarm {_version()}")
    p.add_argument("--config", help=f"rewarm config file (default ${CONFIG_ENV} or {DEFAULT_CONFIG}; "
                                    "one named here must exist)")
    shtab.add_argument_to(p, ["--print-completion"], help="print a bash, zsh or tcsh completion script")
    sub = p.add_subparsers(dest="command", required=True)

    c = sub.add_parser("capture", help="checkpoint a running container into the store")
    c.add_argument("container_id")
    c.add_argument("--name", required=True, help="snapshot name (what rewarm.dev/snapshot names)")
    c.add_argument("--root", default="/run/runc", help="the runtime's state root (runc --root)")
    c.add_argument("--leave-running", action="store_true", help="keep the container running after capture")
    c.add_argument("--containerd", action="store_true",
                   help="checkpoint through containerd's task API (the container keeps running)")
    c.add_argument("--address", default="/run/containerd/containerd.sock", help="containerd's socket")
    c.add_argument("--exit", action="store_true", help="with --containerd: stop the container after capture")
    c.add_argument("--namespace", help="with --containerd: containerd's namespace (default k8s.io); "
                                       "otherwise: the snapshot's Kubernetes namespace")
    c.add_argument("--snapshot-namespace",
                   help="the snapshot's Kubernetes namespace (default: from the container's annotations)")
    c.set_defaults(func=cmd_capture)

    runtimes = ["auto", "containerd", "k3s", "rke2", "k0s", "crio", "podman"]
    runtime_help = ("the node's runtime (default auto: k3s, RKE2 or k0s where their containerd is there, else "
                    "containerd, else CRI-O); k3s, rke2 and k0s are containerd as those distributions run it")
    config_help = ("the runtime's config (default /etc/containerd/config.toml; k3s, rke2: the config.toml they render, "
                   "under /var/lib/rancher/*/agent/etc/containerd, whose templates beside it rewarm edits; "
                   "k0s: /etc/k0s/containerd.toml, with containerd.d beside it; crio: the drop-in, "
                   "/etc/crio/crio.conf.d/50-rewarm.conf)")
    containerd_help = ("the containerd binary that reads the config (default: the distribution's own, else "
                       "containerd on PATH): its `config dump` judges the result and its version the import rules")
    c = sub.add_parser("install", help="add the rewarm runtime handler to containerd (k3s, RKE2, k0s) or CRI-O, "
                                       "rewarm's hooks to CRI-O or Podman")
    c.add_argument("--runtime", choices=runtimes, default="auto", help=runtime_help)
    c.add_argument("--config", dest="config_file", help=config_help)
    c.add_argument("--containerd", metavar="PATH", help=containerd_help)
    c.add_argument("--binary", help="rewarm-runc to register (default: the one beside this command, else on PATH; "
                                    "rewarm-hook is taken from beside it)")
    c.add_argument("--hooks-dir", help="hooks.d for CRI-O and Podman (default /usr/share/containers/oci/hooks.d)")
    c.add_argument("--rewarm-config", help=f"rewarm config file the hooks read (default: theirs, {DEFAULT_CONFIG})")
    c.add_argument("--config-version", type=int, choices=[2, 3],
                   help="containerd config version for a new file: 2 (containerd 1.6/1.7) or 3 (2.x; the default "
                        "where the containerd is 2.x)")
    c.add_argument("--dry-run", action="store_true", help="print the diff, write nothing")
    c.set_defaults(func=cmd_install)

    c = sub.add_parser("uninstall", help="take the rewarm handler and hooks back out of containerd (k3s, RKE2, k0s), "
                                         "CRI-O or Podman")
    c.add_argument("--runtime", choices=runtimes, default="auto", help=runtime_help)
    c.add_argument("--config", dest="config_file", help=config_help)
    c.add_argument("--containerd", metavar="PATH", help=containerd_help)
    c.add_argument("--hooks-dir", help="hooks.d for CRI-O and Podman (default /usr/share/containers/oci/hooks.d)")
    c.add_argument("--dry-run", action="store_true", help="print the diff, write nothing")
    c.set_defaults(func=cmd_uninstall)

    c = sub.add_parser("import", help="take a checkpoint archive (podman container checkpoint --export) into the store")
    c.add_argument("archive")
    c.add_argument("--name", required=True, help="snapshot name")
    c.add_argument("--namespace", default="default")
    c.add_argument("--decryption-key", action="append", default=[], metavar="PRIVATE_KEY.pem",
                   help="decrypt an encrypted export with this private key (added to decryption_keys)")
    c.set_defaults(func=cmd_import)

    c = sub.add_parser("export", help="write a snapshot as a checkpoint archive (CRI-O / Podman layout)")
    c.add_argument("name")
    c.add_argument("archive", help="file to write (.tar, or .tar.gz / .tgz for gzip)")
    c.add_argument("--namespace", default="default")
    c.add_argument("--encrypt-to", action="append", default=[], metavar="PUBLIC_KEY.pem",
                   help="write an OCI archive with the checkpoint encrypted to this key (ocicrypt's layout; "
                        "skopeo reads it as oci-archive:FILE; added to encrypt_recipients)")
    c.set_defaults(func=cmd_export)

    c = sub.add_parser("push", help="push a snapshot to an OCI registry")
    c.add_argument("name")
    c.add_argument("ref", help="REGISTRY/REPO:TAG")
    c.add_argument("--namespace", default="default")
    c.add_argument("--format", choices=["native", "crio"], default="native",
                   help="native: one blob per file, page images in chunks (default); crio: a CRI-O / Podman "
                        "checkpoint image (one layer)")
    c.add_argument("--plain-http", action="store_true", help="speak plain HTTP (a loopback registry only)")
    c.add_argument("--encrypt-to", action="append", default=[], metavar="PUBLIC_KEY.pem",
                   help="encrypt every blob to this RSA or EC public key (ocicrypt's JWE layout; repeat for more "
                        "recipients; added to encrypt_recipients)")
    c.add_argument("--sign-key", metavar="PRIVATE_KEY.pem", help="sign the pushed manifest (cosign's layout; "
                   "default: sign_key_file)")
    c.set_defaults(func=cmd_push)

    c = sub.add_parser("pull", help="pull a snapshot from an OCI registry into the store")
    c.add_argument("ref", help="REGISTRY/REPO:TAG or REGISTRY/REPO@sha256:DIGEST")
    c.add_argument("--name", required=True, help="snapshot name to store it as")
    c.add_argument("--namespace", default="default")
    c.add_argument("--format", choices=["native", "crio"], help="expect this format (default: whatever REF is)")
    c.add_argument("--plain-http", action="store_true", help="speak plain HTTP (a loopback registry only)")
    c.add_argument("--decryption-key", action="append", default=[], metavar="PRIVATE_KEY.pem",
                   help="decrypt with this private key (added to decryption_keys)")
    c.add_argument("--verify-key", action="append", default=[], metavar="PUBLIC_KEY.pem",
                   help="refuse the pull unless it is signed by this key (added to signature_keys)")
    c.set_defaults(func=cmd_pull)

    c = sub.add_parser("bake", help="run an image until ready, capture it, remove it (for node images)")
    c.add_argument("--image", required=True, help="image reference, already on the node")
    c.add_argument("--name", required=True, help="snapshot name")
    c.add_argument("--namespace", default="default", help="Kubernetes namespace the snapshot is for")
    c.add_argument("--ready-file", help="readiness: this file exists in the container (default /run/rewarm/ready)")
    c.add_argument("--ready-http", help="readiness: HTTP 200 from this URL inside the pod")
    c.add_argument("--timeout", type=float, default=1800, help="seconds to wait for ready + capture")
    c.add_argument("--address", default="/run/containerd/containerd.sock", help="the CRI socket (containerd's)")
    c.add_argument("--handler", default="rewarm", help="runtime handler that runs rewarm-runc")
    c.add_argument("--env", action="append", default=[], metavar="NAME=VALUE",
                   help="environment of the worker (as in the pod spec)")
    c.add_argument("command", nargs=argparse.REMAINDER, help="-- CMD...: the command (default: the image's)")
    c.set_defaults(func=cmd_bake)

    c = sub.add_parser("ls", help="list snapshots")
    c.add_argument("--json", action="store_true")
    c.set_defaults(func=cmd_ls)

    for verb, func, text in (("inspect", cmd_inspect, "show a snapshot's manifest"),
                             ("rm", cmd_rm, "remove a snapshot")):
        c = sub.add_parser(verb, help=text)
        c.add_argument("name")
        c.add_argument("--namespace", default="default")
        c.set_defaults(func=func)

    c = sub.add_parser("warm", help="read a snapshot's files into the page cache with parallel readers")
    c.add_argument("name")
    c.add_argument("--namespace", default="default")
    c.add_argument("--threads", type=int, help="parallel readers (default: restore_threads)")
    c.set_defaults(func=cmd_warm)

    c = sub.add_parser("gc", help="remove abandoned captures and least recently used snapshots")
    c.add_argument("--max-bytes", type=parse_size, required=True,
                   help="keep the store at or below this size (bytes, or 500M, 10G, 1.5T)")
    c.set_defaults(func=cmd_gc)

    c = sub.add_parser("doctor", help="check this node: CRIU, runtime, store, config")
    c.add_argument("--json", action="store_true", help="the checks as a JSON list (status, check, detail)")
    c.set_defaults(func=cmd_doctor)

    c = sub.add_parser("events", help="what rewarm did: restores, cold starts and why, captures, pulls (the event log)")
    c.add_argument("--pod", help="only this pod (its name, or a container id)")
    c.add_argument("--namespace", help="only this Kubernetes namespace")
    c.add_argument("--kind", action="append", help="only these events (restored, cold-start, captured, ...)")
    c.add_argument("--last", type=int, default=50, help="how many past events to show (default 50; 0: none)")
    c.add_argument("--follow", "-f", action="store_true", help="then wait for new ones")
    c.add_argument("--json", action="store_true", help="one JSON object per line, as logged")
    c.set_defaults(func=cmd_events)

    c = sub.add_parser("agent", help="post restores, cold starts and captures as Kubernetes Events on their pods; "
                                     "serve /metrics (the node DaemonSet runs it)")
    c.add_argument("--node", help="this node's name (default $NODE_NAME, else the host name)")
    c.add_argument("--kubeconfig", help="a kubeconfig file (default: the pod's ServiceAccount, in-cluster)")
    c.add_argument("--metrics-port", type=int, default=9808,
                   help="port of /metrics and of /readyz, the readiness (0: neither; default 9808)")
    c.add_argument("--api-timeout", type=_positive_seconds, default=10.0, metavar="S",
                   help="longest a call to the API server may take, and the pause before a failed one is "
                        "tried again (default 10)")
    c.add_argument("--credentials-root", default="/", help="where the pod's ServiceAccount files are (the "
                   "installer's /proc/PID/root when it runs the agent in the host's mount namespace)")
    which = c.add_mutually_exclusive_group()
    which.add_argument("--label", action="store_true", help="first label this node rewarm.dev/runtime=ready")
    which.add_argument("--unlabel", action="store_true", help="first take that label off (uninstalled)")
    c.add_argument("--once", action="store_true", help="only set or take off the label (one try), then exit")
    c.set_defaults(func=cmd_agent)

    c = sub.add_parser("demo", help="cold start a worker, capture it, restore a second one; print timings")
    c.add_argument("--warm-seconds", type=float, default=10.0, help="how long the demo worker warms up")
    c.set_defaults(func=cmd_demo)
    return p


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version
    try:
        return version("rewarm")
    except PackageNotFoundError:
        return "(not installed)"


def main(argv: list[str] | None = None) -> None:
    a = parser().parse_args(argv)
    if a.config and not os.path.isfile(a.config):   # a default that is absent means defaults; a named one must be there
        print(f"rewarm: --config {a.config}: no such file", file=sys.stderr)
        sys.exit(2)
    try:
        cfg = settings_file.load(a.config)
        sys.exit(a.func(cfg, a))
    except (RewarmError, OSError) as e:   # anything else is a bug: its traceback is printed
        print(f"rewarm {a.command}: {e}", file=sys.stderr)
        sys.exit(1)
