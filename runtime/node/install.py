"""`rewarm install`: make a container engine offer rewarm as a runtime handler named `rewarm`.

containerd (plain, k3s, RKE2, k0s): a runtime `rewarm` (runc v2 shim with BinaryName = rewarm-runc,
rewarm.dev/* pod and container annotations passed through) with the settings and options of the
handler that is really the default once containerd has merged its files (NVIDIA's `nvidia`, or
runc, whatever its BinaryName: crun), and rewarm's config naming that handler's binary as the
runtime rewarm-runc runs. Where the block goes is decided in one place (containerd_layout.place):
the config itself, a drop-in of rewarm's beside the node's drop-ins, k3s's / RKE2's template, k0s's
containerd.d. containerd itself (`config dump`) then judges the result: a change it does not load
with the handler chained right is undone and refused. CRI-O: a drop-in under crio.conf.d. CRI-O
and Podman: rewarm-hook's prestart and poststop in their hooks.d. All idempotent: a second run
changes nothing. `rewarm uninstall` gives back what was there, byte for byte.
"""
from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
from dataclasses import dataclass, replace
from typing import Any

import tomlkit

from runtime.host import settings_file
from runtime.front.names import DEFAULT_CONFIG
from runtime.model.annotations import KNOWN
from runtime.model.errors import InstallError
from runtime.model.resources import config_file
from runtime.node import config_files
from runtime.node import containerd_config as cc
from runtime.node import containerd_dump
from runtime.node import containerd_layout as layout
from runtime.node.config_files import BACKUP_SUFFIX, Change, Done, Journal
from runtime.node.containerd_config import CRI_PLUGIN, HANDLER, containerd_config

__all__ = ["BACKUP_SUFFIX", "CRI_PLUGIN", "HANDLER", "InstallError", "Node", "Outcome", "containerd_config",
           "install", "uninstall"]

CONTAINERD_CONFIG = layout.FLAVORS["containerd"].config
CRIO_DROPIN = "/etc/crio/crio.conf.d/50-rewarm.conf"
HOOKS_DIR = "/usr/share/containers/oci/hooks.d"      # where CRI-O and Podman look by default
CONTAINERDS = tuple(layout.FLAVORS)
ENGINES = (*CONTAINERDS, "crio", "podman")


@dataclass(frozen=True)
class Node:
    """Where install writes and what it names; None: the defaults (the runtime's own config file,
    rewarm-runc beside this rewarm, hooks.d, /etc/rewarm/config.json, the flavor's containerd)."""
    config: str | None = None
    binary: str | None = None
    hooks_dir: str | None = None
    rewarm_config: str | None = None
    containerd: str | None = None


@dataclass(frozen=True)
class Outcome:
    """What a run did: the engine it worked on (auto-detection's answer), each file, the socket its
    containerd listens on, the command that loads the change ("" where none is needed), notes."""
    runtime: str
    done: list[Done]
    socket: str = ""
    restart: str = ""
    notes: tuple[str, ...] = ()


def engine_of(name: str, config: str | None = None) -> str:
    """`auto`: the engine the named config belongs to (its path says: k3s's, RKE2's, k0s's, CRI-O's
    drop-ins, else containerd's), without one the engine this node runs (a Kubernetes
    distribution's containerd first); else the name itself."""
    if name != "auto":
        if name not in ENGINES:
            raise InstallError(f"unknown runtime {name!r} ({', '.join(ENGINES)} or auto)")
        return name
    if config:
        return "crio" if os.path.basename(os.path.dirname(os.path.abspath(config))) == "crio.conf.d" \
            else layout.named_by(config).name
    flavor = layout.detect()
    if flavor:
        return flavor.name
    if layout.crio_running():
        return "crio"
    raise InstallError("no containerd (plain, k3s, RKE2, k0s) or CRI-O found on this node: pass --runtime")


# -- containerd -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Plan:
    """The files to write for the handler, the runtime rewarm-runc must run, and the config that
    containerd will read afterwards where it is rendered by someone else (k3s, RKE2)."""
    changes: list[Change]
    chained: str | None
    predicted: str | None = None
    notes: tuple[str, ...] = ()
    judge_after: bool = True        # containerd reads the written files themselves (not so: k3s, RKE2, k0s)


def _own_file(version: int, nl: str, body: str, copied_from: str = "") -> str:
    """A file of rewarm's: its first line says so; a 1.x drop-in also names the file it copies."""
    head = [cc.OWN_FILE]
    if copied_from:
        head += ["# containerd 1.x takes the CRI plugin's table whole from the last file that has one: this",
                 "# file carries that table with the rewarm handler added (`rewarm doctor` warns once it changes).",
                 cc.COPIED + copied_from]
    return nl.join([*head, f"version = {version}", "", ""]) + body


def _check_base(current: containerd_dump.Dump | None, section: dict[str, Any]) -> str | None:
    """The runtime rewarm-runc must run (the base handler's binary); refused where rewarm's reading
    of the files and containerd's differ on which handler that is."""
    name, base = cc.base_handler(section)
    chained = cc.chained_binary(base)
    if current is not None:
        theirs, settings = cc.base_handler(current.containerd())
        if (theirs, cc.chained_binary(settings)) != (name, chained):
            raise InstallError(f"rewarm reads the default handler as {name!r} (runs {chained or 'runc'}), {current.by} "
                               f"as {theirs!r} (runs {cc.chained_binary(settings) or 'runc'}): a layout rewarm cannot "
                               "edit safely; nothing was changed")
    return chained


def _taken_out(path: str, main: str) -> Change | None:
    """The change that takes rewarm's part out of one file: a file rewarm made goes (unless someone
    added to it), an edited one gets the kept node copy back where nobody changed it since, else
    loses only rewarm's part; `main`, the config itself, also an earlier rewarm's unmarked handler.
    None: nothing of rewarm's there."""
    raw = config_files.read(config_files.target(path) if os.path.lexists(path) else path)
    if raw is None:
        return None
    if cc.own(raw):
        rest = cc.without_block(raw).split("\n", 1)[-1]
        added = [line for line in rest.splitlines() if line.strip() and not line.startswith(("#", "version = "))
                 and line.strip() != layout.BASE]
        return Change(path, rest if added else None)
    legacy = path == main and cc.unmarked_handler(raw, path)
    node = cc.node_text(raw, path) if legacy else cc.without_block(raw)
    if node == raw:
        return None
    kept = config_files.read(config_files.backup_of(path))
    if not node.strip() and kept is None:         # the file install created
        return Change(path, None)
    nl = cc.newline_of(raw)
    pristine = kept is not None and (node in (kept, kept + nl)
                                     or (legacy and cc.parse(node, path) == cc.parse(kept, path)))
    return Change(path, kept if pristine else node, drop_backup=True)


def _taken_out_of(paths: list[str], main: str, keep: set[str]) -> list[Change]:
    """rewarm's part out of each of `paths` but those in `keep` (the one install writes; what a
    distribution renders or generates, which is not the node's own)."""
    return [c for c in (_taken_out(p, main) for p in dict.fromkeys(paths) if p not in keep) if c]


@dataclass(frozen=True)
class Scene:
    """What a plan starts from: the flavor, the files its containerd reads (rewarm's part aside),
    that containerd, what it makes of them now (None: not judged), and the rewarm-runc to register."""
    flavor: layout.Flavor
    files: list[layout.Source]
    rd: containerd_dump.Reader
    current: containerd_dump.Dump | None
    binary: str

    def node(self) -> list[layout.Source]:
        return [s for s in self.files if not s.own]


def _plan_files(scene: Scene, new_version: int) -> Plan:
    """containerd's own config (and k0s's, where k0s no longer manages it): the block where
    place() says; a config that is not there yet in `new_version`."""
    where = layout.place(scene.files, scene.rd.major, new_version)
    node = scene.node()
    section = cc.cri_section({"plugins": {CRI_PLUGIN[2]: where.copy}}, 2) if where.copy is not None \
        else layout.cri(node, scene.rd.major)
    chained = _check_base(scene.current, section)
    nl = cc.newline_of(node[0].text)
    block = cc.block(where.version, cc.handlers(section, scene.binary), nl, where.copy)
    if where.own:
        new = _own_file(where.version, nl, block, where.copied_from)
    else:
        new = cc.with_block(next(s.text for s in node if s.path == where.path), block, where.version)
    cc.check_block(new, where.version, scene.binary, where.path)
    cleaned = _taken_out_of(layout.rewarm_files(scene.flavor, scene.files, scene.rd.major), scene.flavor.config,
                            {where.path})
    return Plan([Change(where.path, new, keep_backup=not where.own), *cleaned], chained)


def _plan_template(scene: Scene) -> Plan:
    """k3s, RKE2: the block at the end of the template they render containerd's config from
    (created from their base where there is none). Static text passes a Go template unchanged, so
    the next rendered config is the last one, less its old block, plus the new block: that is
    checked before anything is written."""
    flavor, node = scene.flavor, scene.node()
    owner = layout._cri_owner(node) if scene.rd.major < 2 else None
    if owner is not None and owner is not node[0]:
        raise InstallError(f"{flavor.name}'s config imports {owner.path}, whose CRI table containerd 1.x takes whole: "
                           "a handler in the template would not reach containerd")
    v = layout.version(node)
    section = layout.cri(node, scene.rd.major)
    chained = _check_base(scene.current, section)
    path = layout.template_path(flavor, v)
    raw = config_files.read(config_files.target(path) if os.path.lexists(path) else path)
    ours = raw is None or cc.own(raw)
    nl = cc.newline_of(raw or node[0].text)
    block = cc.block(v, cc.handlers(section, scene.binary), nl)
    if ours:
        new = cc.OWN_TEMPLATE + nl + layout.BASE + nl + nl + block
    else:
        rest = cc.without_block(str(raw))
        if any(f"runtimes.{q}{HANDLER}{q}" in rest for q in ("", '"', "'")):
            raise InstallError(f"{path} defines a `{HANDLER}` handler of its own: take it out, then run "
                               "`rewarm install`")
        new = rest + ("" if rest.endswith("\n") or not rest else nl) + nl + block
    rendered = node[0].text
    predicted = rendered + ("" if rendered.endswith("\n") else nl) + nl + block
    cc.check_block(predicted, v, scene.binary, f"{flavor.config} (as {flavor.name} will render it)")
    changes = [Change(path, new, keep_backup=not ours)]
    changes += _taken_out_of(layout.rewarm_files(flavor, [], scene.rd.major), flavor.config, {path, flavor.config})
    return Plan(changes, chained, predicted, (f"{flavor.name} renders {flavor.config} from {path} when it starts",),
                judge_after=False)


def _plan_k0s(scene: Scene) -> Plan:
    """k0s managing its config: a drop-in in containerd.d, which k0s merges into the CRI config it
    generates (it merges such drop-ins rather than import them: containerd 1.x would let their CRI
    table replace its own)."""
    node = scene.node()
    v = layout.version(node)
    section = layout.cri(node, scene.rd.major)
    chained = _check_base(scene.current, section)
    path = layout.k0s_dropin(scene.flavor)
    new = _own_file(v, "\n", cc.block(v, {HANDLER: cc.handlers(section, scene.binary)[HANDLER]}, "\n"))
    cc.check_block(new, v, scene.binary, path)
    return Plan([Change(path, new)], chained, None, (f"k0s merges {path} into containerd's CRI config when it starts",),
                judge_after=False)


def _check_predicted(flavor: layout.Flavor, rd: containerd_dump.Reader, plan: Plan) -> None:
    """The config k3s / RKE2 will render, loaded by their containerd before anything is written."""
    if plan.predicted is None or rd.binary is None:
        return
    fd, path = tempfile.mkstemp(prefix=".rewarm-check-", suffix=".toml", dir=os.path.dirname(flavor.config))
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="") as f:
            f.write(plan.predicted)
        _judge(containerd_dump.dump(rd.binary, path), plan)
    finally:
        os.unlink(path)


def _judge(after: containerd_dump.Dump, plan: Plan, binary: str | None = None) -> None:
    """containerd's verdict: its merged config has the handler, with rewarm-runc, on the base
    handler's runtime."""
    handler = after.handler()
    if handler is None:
        raise InstallError(f"{after.by} does not see the `{HANDLER}` handler in the result")
    if binary is not None and (handler.get("options") or {}).get("BinaryName") != binary:
        raise InstallError(f"{after.by} sees the `{HANDLER}` handler with another binary: "
                           f"{(handler.get('options') or {}).get('BinaryName')!r}")
    name, base = cc.base_handler(after.containerd())
    if cc.chained_binary(base) != plan.chained:
        raise InstallError(f"{after.by} makes {name!r} the default handler, running "
                           f"{cc.chained_binary(base) or 'runc'}, "
                           f"not {plan.chained or 'runc'}")


def _current(flavor: layout.Flavor, rd: containerd_dump.Reader, main: str | None) -> containerd_dump.Dump | None:
    """What containerd makes of the node's config now; a config it cannot load is refused here."""
    if flavor.template and main is None:
        raise InstallError(f"{flavor.config} does not exist: start {flavor.name} once, so that it renders containerd's "
                           "config (rewarm reads the default handler from it), then run `rewarm install` again")
    if rd.binary is None or (main is None and rd.major < 2):    # 1.x refuses a missing file; 2.x takes its defaults
        return None
    return containerd_dump.dump(rd.binary, flavor.config)


def _plan(flavor: layout.Flavor, node: Node, version: int | None, rd: containerd_dump.Reader) -> Plan:
    """Where this flavor's handler goes, with everything of rewarm's elsewhere taken out, and the
    runtime rewarm-runc must run named in rewarm's config."""
    main = config_files.read(flavor.config)
    current = _current(flavor, rd, main)        # containerd's own word first on a config it cannot load
    files = layout.sources(flavor.config, rd.major)
    if files[0].own:
        raise InstallError(f"{flavor.config} is a file rewarm wrote: pass --config with the node's own config")
    scene = Scene(flavor, files, rd, current, node.binary or default_binary())
    if flavor.template:
        plan = _plan_template(scene)
    elif flavor.dropins and layout.k0s_managed(main or ""):
        plan = _plan_k0s(scene)
    else:
        plan = _plan_files(scene, version or (3 if rd.major >= 2 else 2))
    _check_predicted(flavor, rd, plan)
    path = node.rewarm_config or DEFAULT_CONFIG       # rewarm-runc runs what the base handler runs
    text = _with_runtime(path, plan.chained)
    return plan if text is None else replace(plan, changes=[*plan.changes, Change(path, text)])


def _containerd_install(flavor: layout.Flavor, node: Node, version: int | None, dry_run: bool) -> Outcome:
    rd = containerd_dump.reader(flavor)
    plan = _plan(flavor, node, version, rd)
    journal = Journal()
    done = [config_files.apply(c, dry_run, journal) for c in plan.changes]
    notes = [*plan.notes, *([rd.note] if rd.note else [])]
    if dry_run:
        notes.append("dry run: nothing written, so containerd did not judge the result")
    elif rd.binary and plan.judge_after:
        try:
            _judge(containerd_dump.dump(rd.binary, flavor.config), plan, node.binary or default_binary())
        except InstallError as e:
            journal.undo()
            raise InstallError(f"{e}; rewarm put the files back as they were") from e
    changed = any(d.changed for d in done) and not dry_run
    return Outcome(flavor.name, done, flavor.socket, layout.restart_command(flavor) if changed else "", tuple(notes))


def _containerd_uninstall(flavor: layout.Flavor, dry_run: bool) -> Outcome:
    rd = containerd_dump.reader(flavor)
    managed = flavor.dropins and layout.k0s_managed(config_files.read(flavor.config) or "")
    try:
        files = [] if flavor.template else layout.sources(flavor.config, rd.major)
    except InstallError:                      # a config broken since: still find rewarm's files
        files = []
    # What k3s / RKE2 render and what k0s generates is theirs: only templates and drop-ins are rewarm's.
    keep = {flavor.config, *(s.path for s in files)} if flavor.template or managed else set()
    changes = _taken_out_of([flavor.config, *layout.rewarm_files(flavor, files, rd.major)], flavor.config, keep)
    journal = Journal()
    done = [config_files.apply(c, dry_run, journal) for c in changes] or [Done(flavor.config, False, "")]
    changed = any(d.changed for d in done) and not dry_run
    return Outcome(flavor.name, done, flavor.socket, layout.restart_command(flavor) if changed else "",
                   (rd.note,) if rd.note else ())


def _flavor(engine: str, node: Node) -> layout.Flavor:
    return layout.with_overrides(layout.FLAVORS[engine], node.config, node.containerd)


# -- CRI-O and Podman -------------------------------------------------------------------------------


def crio_dropin(binary: str) -> str:
    doc = tomlkit.document()
    doc.add(tomlkit.comment("rewarm: restore AI inference workers from snapshots (written by `rewarm install`)"))
    runtime = tomlkit.table()
    runtime["runtime_path"] = binary
    runtime["runtime_type"] = "oci"
    runtime["runtime_root"] = "/run/runc"
    runtime["allowed_annotations"] = sorted(KNOWN)
    doc["crio"] = {"runtime": {"runtimes": {HANDLER: runtime}}}
    return tomlkit.dumps(doc)


def default_binary(name: str = "rewarm-runc") -> str:
    """The command beside the running `rewarm` (same installation, a venv too), else on PATH."""
    beside = os.path.join(os.path.dirname(os.path.abspath(sys.argv[0])), name)
    if os.access(beside, os.X_OK):
        return beside
    found = shutil.which(name)
    if not found:
        raise InstallError(f"{name} is neither beside {sys.argv[0]} nor on PATH: pass --binary")
    return os.path.abspath(found)


def hook_files(hook: str, rewarm_config: str | None) -> dict[str, str]:
    """hooks.d files (OCI hooks config 1.0.0) for rewarm-hook prestart and poststop, from config/hooks.d."""
    out = {}
    for template in sorted(config_file("hooks.d").iterdir(), key=lambda t: t.name):
        config: dict[str, Any] = json.loads(template.read_text(encoding="utf-8"))
        config["hook"]["path"] = hook
        if rewarm_config:
            config["hook"]["env"] = [*config["hook"]["env"], f"REWARM_CONFIG={rewarm_config}"]
        out[template.name] = json.dumps(config, indent=2) + "\n"
    return out


def _hooks(node: Node, uninstall: bool) -> list[Change]:
    hook = os.path.join(os.path.dirname(node.binary), "rewarm-hook") if node.binary else \
        "rewarm-hook" if uninstall else default_binary("rewarm-hook")
    return [Change(os.path.join(node.hooks_dir or HOOKS_DIR, name), None if uninstall else text)
            for name, text in hook_files(hook, node.rewarm_config).items()]


def _with_runtime(path: str, chained: str | None) -> str | None:
    """rewarm's node config (kept as it is) with `runtime` naming what the base handler runs, where
    it names something that does not fit (cc.fits); None: nothing to write (no runtime to chain,
    and none named that does not fit)."""
    try:
        current = settings_file.read_raw(path)
    except FileNotFoundError:
        current = {}
    except (OSError, ValueError) as e:
        raise InstallError(f"rewarm config {path}: {e}") from e
    if not isinstance(current, dict):
        raise InstallError(f"rewarm config {path} is not a JSON object")
    if cc.fits(str(current.get("runtime") or "runc"), chained):
        return None if chained is None else config_files.read(path) or ""
    return json.dumps({**current, "runtime": chained or "runc"}, indent=2) + "\n"


# -- the commands -----------------------------------------------------------------------------------


def install(engine: str, node: Node, version: int | None = None, dry_run: bool = False) -> Outcome:
    """Add the handler (containerd family, CRI-O) and the hooks (CRI-O, Podman); `engine` may be auto."""
    engine = engine_of(engine, node.config)
    if engine in CONTAINERDS:
        return _containerd_install(_flavor(engine, node), node, version, dry_run)
    changes = [Change(node.config or CRIO_DROPIN, crio_dropin(node.binary or default_binary()))] \
        if engine == "crio" else []
    changes += _hooks(node, uninstall=False)   # their hooks.d runs rewarm-hook; rewarm-runc skips a hook already there
    journal = Journal()
    done = [config_files.apply(c, dry_run, journal) for c in changes]
    restart = "systemctl restart crio" if engine == "crio" and any(d.changed for d in done) and not dry_run else ""
    return Outcome(engine, done, "/var/run/crio/crio.sock" if engine == "crio" else "", restart)


def uninstall(engine: str, node: Node, dry_run: bool = False) -> Outcome:
    """Take rewarm back out: every file as it was before install (byte for byte where nobody edited
    it since; else less rewarm's part), files rewarm made removed, nothing else touched."""
    engine = engine_of(engine, node.config)
    if engine in CONTAINERDS:
        return _containerd_uninstall(_flavor(engine, node), dry_run)
    changes = [Change(node.config or CRIO_DROPIN, None)] if engine == "crio" else []
    changes += _hooks(node, uninstall=True)
    journal = Journal()
    done = [config_files.apply(c, dry_run, journal) for c in changes]
    restart = "systemctl restart crio" if engine == "crio" and any(d.changed for d in done) and not dry_run else ""
    return Outcome(engine, done, "", restart)

