"""`rewarm doctor`'s handler check: does the node's containerd have the `rewarm` handler, pointing
at a rewarm-runc with its engine, chained to the runtime of the handler that is really the default?

Judged on what containerd makes of its config (`containerd config dump` with the node's config,
imports followed and merged as that containerd merges them), not on one file's text: a handler in
a file that a drop-in overrides is no handler. Only where containerd's binary is absent are the
files parsed instead, and the check says so. The running daemon, where its socket answers, says
whether it has loaded the handler yet.
"""
from __future__ import annotations

import json
import os
import shutil
from typing import Any

from runtime.model.errors import InstallError, RewarmError
from runtime.node import config_files
from runtime.node import containerd_config as cc
from runtime.node import containerd_dump
from runtime.node import containerd_layout as layout

Check = tuple[str, str, str]   # (status OK/WARN/FAIL, what, detail)
WHAT = "containerd handler"


def _view(flavor: layout.Flavor) -> tuple[dict[str, Any], str]:
    """The CRI `containerd` table containerd reads, and how it was found."""
    rd = containerd_dump.reader(flavor)
    if rd.binary:
        dumped = containerd_dump.dump(rd.binary, flavor.config)
        return dumped.containerd(), f"dumped by {dumped.by}"
    files = layout.sources(flavor.config, rd.major, as_is=True)
    return cc.cri_section(layout.merged(files, rd.major), layout.version(files)), rd.note


def _pending(flavor: layout.Flavor) -> str:
    """Where rewarm's handler is written but not yet in what containerd reads (k3s renders, k0s
    merges only when they start): the restart that brings it in."""
    candidates = layout.rewarm_files(flavor, [], 2) if flavor.template or flavor.dropins else []
    if any(cc.has_block(config_files.read(p) or "") for p in candidates):
        return (f"rewarm's handler is in {flavor.name}'s files but not yet in the config: "
                f"{layout.restart_command(flavor)}")
    return "run `rewarm install`"


def _fits(runtime: str, chained: str | None) -> bool:
    """cc.fits, where also a name on PATH and the path it finds are the same program."""
    if cc.fits(runtime, chained):
        return True
    found = [shutil.which(x) for x in (runtime, chained or "")]
    return None not in found and os.path.realpath(str(found[0])) == os.path.realpath(str(found[1]))


def _live(flavor: layout.Flavor) -> list[Check]:
    """Whether the running containerd (its CRI status) has loaded the handler."""
    if not layout.listening(flavor.socket):
        return []
    try:
        from runtime.clients import cri
        with cri.Client(flavor.socket, timeout=5) as client:
            info = json.loads(client.status(verbose=True).info["config"])
    except (RewarmError, ImportError, KeyError, ValueError) as e:
        return [("WARN", "containerd handler live", f"{flavor.socket}: no CRI status ({e})")]
    loaded = cc.HANDLER in ((info.get("containerd") or {}).get("runtimes") or {})
    return [("OK" if loaded else "WARN", "containerd handler live",
             f"the containerd at {flavor.socket} " + ("runs with it" if loaded else
                                                     f"has not loaded it yet: {layout.restart_command(flavor)}"))]


def _pruned(table: Any) -> Any:
    """A table less its empty tables (which say nothing to containerd), for comparing two of them."""
    if not isinstance(table, dict):
        return table
    out = {k: _pruned(v) for k, v in table.items()}
    return {k: v for k, v in out.items() if v != {}}


def _copies(flavor: layout.Flavor) -> list[Check]:
    """A containerd 1.x drop-in of rewarm's carries a copy of another file's CRI table: warn once
    that file has changed (the copy would hide the change from containerd)."""
    out: list[Check] = []
    try:
        files = layout.sources(flavor.config, 1)
    except InstallError:
        return out
    for own in (s for s in files if s.own):
        text = config_files.read(own.path) or ""
        line = next((ln for ln in text.splitlines() if ln.startswith(cc.COPIED)), None)
        if line is None:
            continue
        source = line[len(cc.COPIED):].strip()
        theirs = cc.parse(config_files.read(source) or "", source).get("plugins", {}).get(cc.CRI_PLUGIN[2], {})
        mine = cc.parse(text, own.path).get("plugins", {}).get(cc.CRI_PLUGIN[2], {})
        runtimes = (mine.get("containerd") or {}).get("runtimes") or {}
        runtimes.pop(cc.HANDLER, None)
        if "runc" not in cc.cri_section({"plugins": {cc.CRI_PLUGIN[2]: theirs}}, 2).get("runtimes", {}):
            runtimes.pop("runc", None)      # the runc rewarm adds where the copied table has no runtimes
        if _pruned(theirs) != _pruned(mine):
            out.append(("WARN", "handler copy", f"{source} changed since `rewarm install` copied its CRI table "
                                                f"into {own.path} (containerd 1.x reads the copy): run "
                                                "`rewarm install` again"))
    return out


def checks(flavor: layout.Flavor, runtime: str) -> list[Check]:
    """The handler check of one containerd flavor; `runtime`: what rewarm-runc runs (rewarm's config)."""
    try:
        containerd, how = _view(flavor)
    except InstallError as e:
        return [("FAIL", WHAT, str(e))]
    handler = (containerd.get("runtimes") or {}).get(cc.HANDLER)
    if not isinstance(handler, dict):
        return [("WARN", WHAT, f"no runtime `{cc.HANDLER}` in the config {flavor.name} reads ({flavor.config}; {how}): "
                               f"{_pending(flavor)}")]
    binary = str((handler.get("options") or {}).get("BinaryName") or "")
    engine = os.path.join(os.path.dirname(binary), "rewarm-runc-engine")
    ok = bool(binary) and os.access(binary, os.X_OK) and os.access(engine, os.X_OK)
    out: list[Check] = [("OK" if ok else "FAIL", WHAT,
                         f"rewarm -> {binary or '(no BinaryName)'} in {flavor.config} ({how})"
                         + ("" if ok else f": {binary or 'rewarm-runc'} (or {engine}) missing"))]
    name, base = cc.base_handler(containerd)
    chained = cc.chained_binary(base)
    fits = _fits(runtime, chained)
    out.append(("OK" if fits else "FAIL", "handler chain",
                f"rewarm-runc runs {runtime}; the default handler {name!r} runs {chained or 'runc'}"
                + ("" if fits else ": run `rewarm install` again (it writes the runtime into rewarm's config)")))
    return out + _copies(flavor) + _live(flavor)


def node_checks(runtime: str) -> list[Check]:
    """The check on this node: its containerd found as `rewarm install --runtime auto` finds it."""
    flavor = layout.detect()
    if flavor is None:
        return [("WARN", WHAT, "no containerd (plain, k3s, RKE2, k0s) found on this node: run `rewarm install`")]
    return checks(flavor, runtime)
