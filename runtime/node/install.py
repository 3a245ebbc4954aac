"""`rewarm install`: make a container engine offer rewarm as a runtime handler named `rewarm`.

containerd: a runtime `rewarm` next to `runc` in the CRI plugin's config (runc v2 shim with
BinaryName = rewarm-runc, rewarm.dev/* pod and container annotations passed through), copying runc's
own options so that both handlers run containers alike. The file is edited in place with tomlkit,
which keeps its comments and layout; the old file is kept as a backup; the diff is printed.
CRI-O: a drop-in under crio.conf.d. CRI-O and Podman: rewarm-hook's prestart and poststop in their
hooks.d. All idempotent: a second run changes nothing.
"""
from __future__ import annotations

import difflib
import json
import os
import shutil
import sys
from dataclasses import dataclass
from typing import Any

import tomlkit
import tomlkit.exceptions
from tomlkit import TOMLDocument
from tomlkit.container import OutOfOrderTableProxy
from tomlkit.items import Table

from runtime.adapters import settings_file
from runtime.adapters.files import atomic_write
from runtime.front.names import DEFAULT_CONFIG
from runtime.model.annotations import KNOWN, PREFIX
from runtime.model.errors import InstallError
from runtime.model.resources import config_file

HANDLER = "rewarm"
CRI_PLUGIN = {2: "io.containerd.grpc.v1.cri", 3: "io.containerd.cri.v1.runtime"}
CONTAINERD_CONFIG = "/etc/containerd/config.toml"
CRIO_DROPIN = "/etc/crio/crio.conf.d/50-rewarm.conf"
HOOKS_DIR = "/usr/share/containers/oci/hooks.d"      # where CRI-O and Podman look by default
BACKUP_SUFFIX = ".rewarm-backup"


def _table(parent: Any, key: str) -> Any:
    """parent[key] as a table (made where missing); also one whose parts are spread over the file
    (a table appended at the end by hand or by another tool)."""
    if key not in parent:
        parent[key] = tomlkit.table(is_super_table=True)
    found = parent[key]
    if not isinstance(found, (Table, OutOfOrderTableProxy)):
        raise InstallError(f"containerd config: {key} is not a table")
    return found


def _indent_like(table: Table, model: Table) -> None:
    """Indent the new table's keys like runc's, with a blank line after each part."""
    depth = len(model.trivia.indent)
    table["options"].add(tomlkit.nl())
    table["options"].indent(depth + 4)
    table.indent(depth + 2)
    table.trivia.indent = ""                               # the header sits under its parent by itself
    table["options"].trivia.indent = model.trivia.indent + "  "


def containerd_config(text: str, binary: str, version: int | None = None) -> str:
    """The config text with the rewarm handler in it. `version` 3 writes containerd 2.x's form for a
    new or empty file; an existing file keeps its own version."""
    try:
        doc = tomlkit.parse(text)
    except tomlkit.exceptions.ParseError as e:
        raise InstallError(f"containerd config is not valid TOML: {e}") from e
    have = doc.get("version")
    if have is None and doc.get("plugins"):
        raise InstallError("containerd config version 1 is not supported: convert it to version 2 first "
                           "(start from `containerd config default`)")
    version = int(have) if have is not None else (version or 2)
    if version not in CRI_PLUGIN:
        raise InstallError(f"containerd config version {version} is not supported (2: containerd 1.x, 3: 2.x)")
    if have is None:
        doc["version"] = version
    cri = _table(_table(_table(doc, "plugins"), CRI_PLUGIN[version]), "containerd")
    runtimes = _table(cri, "runtimes")
    if "runc" not in runtimes:  # CRI refuses a config whose default runtime (runc) is not defined
        runc = tomlkit.table()
        runc["runtime_type"] = "io.containerd.runc.v2"
        runtimes["runc"] = runc
    base = runtimes[_base_handler(cri, runtimes)].unwrap()
    options = {**(base.get("options") or {}), "BinaryName": binary}
    handler = tomlkit.table()
    for key, value in base.items():
        if key != "options":
            handler[key] = value
    handler["runtime_type"] = "io.containerd.runc.v2"
    handler["pod_annotations"] = [PREFIX + "*"]
    handler["container_annotations"] = [PREFIX + "*"]
    handler.add(tomlkit.nl())
    handler["options"] = options
    _indent_like(handler, runtimes["runc"])
    if HANDLER in runtimes and runtimes[HANDLER].unwrap() == handler.unwrap():
        return text
    runtimes[HANDLER] = handler
    return tomlkit.dumps(doc)


def _base_handler(cri: Any, runtimes: Any) -> str:
    """The handler whose options rewarm's copies: the node's default one where it is a runc shim
    (NVIDIA's GPU Operator makes `nvidia` the default, with nvidia-container-runtime as its binary),
    else runc."""
    default = str(cri.get("default_runtime_name") or "runc")
    if default != HANDLER and default in runtimes and \
            runtimes[default].get("runtime_type", "io.containerd.runc.v2") == "io.containerd.runc.v2":
        return default
    return "runc"


def chained_runtime(text: str) -> str | None:
    """The real runtime rewarm-runc must exec on this node: the binary of the default handler where
    that is not plain runc (nvidia-container-runtime under the GPU Operator); None for runc."""
    doc, version, runtimes = _runtimes(text)
    cri = doc.get("plugins", {}).get(CRI_PLUGIN.get(version, ""), {}).get("containerd", {})
    base = _base_handler(cri, runtimes) if runtimes else "runc"
    binary = str(runtimes.get(base, {}).get("options", {}).get("BinaryName", "")) if base != "runc" else ""
    return binary or None


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


def _read(path: str) -> str | None:
    try:
        with open(path, encoding="utf-8") as f:
            return f.read()
    except FileNotFoundError:
        return None


def apply(path: str, new: str | None, dry_run: bool) -> tuple[bool, str]:
    """Write `new` to `path` (None: remove it) unless it is so already; returns (changed, unified
    diff). The node's own file, before rewarm first changed it, is kept as path + BACKUP_SUFFIX:
    what `rewarm uninstall` puts back byte for byte (a later install, an upgrade, keeps that copy)."""
    old = _read(path)
    mode = os.stat(path).st_mode & 0o777 if old is not None else 0o644
    diff = "".join(difflib.unified_diff((old or "").splitlines(True), (new or "").splitlines(True), path,
                                        path + " (rewarm)"))
    if old == new or dry_run:
        return old != new, diff
    if new is None:
        os.unlink(path)
    else:
        if old and not os.path.exists(path + BACKUP_SUFFIX):
            shutil.copy2(path, path + BACKUP_SUFFIX)
        atomic_write(path, new, mode)
    return True, diff


def containerd_without(text: str) -> str | None:
    """The config as it was before `rewarm install` (None: install made the file), or, where it was
    edited since, this one less the rewarm handler."""
    doc, version, runtimes = _runtimes(text)
    if HANDLER not in runtimes:
        return text
    if text == containerd_config("", str(runtimes[HANDLER].get("options", {}).get("BinaryName", "")), version):
        return None
    del runtimes[HANDLER]
    return tomlkit.dumps(doc)


def _runtimes(text: str) -> tuple[TOMLDocument, int, Any]:
    """The parsed config, its version, and its CRI runtimes table (empty where it has none)."""
    try:
        doc = tomlkit.parse(text)
    except tomlkit.exceptions.ParseError as e:
        raise InstallError(f"containerd config is not valid TOML: {e}") from e
    version = int(doc.get("version") or 2)
    plugin = doc.get("plugins", {}).get(CRI_PLUGIN.get(version, ""), {})
    return doc, version, plugin.get("containerd", {}).get("runtimes", {})


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


@dataclass(frozen=True)
class Node:
    """Where install writes and what it names; None: the defaults (the runtime's own config file,
    rewarm-runc beside this rewarm, hooks.d, /etc/rewarm/config.json)."""
    config: str | None = None
    binary: str | None = None
    hooks_dir: str | None = None
    rewarm_config: str | None = None


def install(engine: str, node: Node, version: int | None = None, dry_run: bool = False) -> list[tuple[str, bool, str]]:
    """Returns (path, changed, diff) for every file it (would) write."""
    config, binary, hooks_dir, rewarm_config = node.config, node.binary, node.hooks_dir, node.rewarm_config
    writes: dict[str, str] = {}
    if engine == "containerd":
        path = config or CONTAINERD_CONFIG
        try:
            with open(path, encoding="utf-8") as f:
                text = f.read()
        except FileNotFoundError:
            text = ""
        writes[path] = containerd_config(text, binary or default_binary(), version)
        chained = chained_runtime(writes[path])
        if chained:   # rewarm-runc runs what the node's default handler ran
            writes[rewarm_config or DEFAULT_CONFIG] = _with_runtime(rewarm_config or DEFAULT_CONFIG, chained)
    elif engine == "crio":
        writes[config or CRIO_DROPIN] = crio_dropin(binary or default_binary())
    elif engine != "podman":
        raise InstallError(f"unknown runtime {engine!r} (containerd, crio or podman)")
    if engine in ("crio", "podman"):  # their hooks.d runs rewarm-hook; rewarm-runc skips a hook already there
        hook = os.path.join(os.path.dirname(binary), "rewarm-hook") if binary else default_binary("rewarm-hook")
        for name, text in hook_files(hook, rewarm_config).items():
            writes[os.path.join(hooks_dir or HOOKS_DIR, name)] = text
    return [(path, *apply(path, text, dry_run)) for path, text in writes.items()]


def _with_runtime(path: str, runtime: str) -> str:
    """rewarm's node config (kept as it is) with `runtime` naming the real runtime."""
    try:
        current = settings_file.read_raw(path)
    except FileNotFoundError:
        current = {}
    except (OSError, ValueError) as e:
        raise InstallError(f"rewarm config {path}: {e}") from e
    if not isinstance(current, dict):
        raise InstallError(f"rewarm config {path} is not a JSON object")
    if current.get("runtime") == runtime:
        return _read(path) or ""
    return json.dumps({**current, "runtime": runtime}, indent=2) + "\n"


def uninstall(engine: str, node: Node, dry_run: bool = False) -> list[tuple[str, bool, str]]:
    """Take rewarm back out: containerd's config as it was (the kept copy, where nobody edited the
    file since install; else less the handler), CRI-O's drop-in and the hooks.d files removed."""
    config, hooks_dir = node.config, node.hooks_dir
    out = []
    if engine == "containerd":
        path = config or CONTAINERD_CONFIG
        text, kept = _read(path), _read(path + BACKUP_SUFFIX)
        if text is not None:
            binary = _handler_binary(text)
            pristine = kept is not None and binary is not None and containerd_config(kept, binary) == text
            out.append((path, *apply(path, kept if pristine else containerd_without(text), dry_run)))
            if pristine and not dry_run:
                os.unlink(path + BACKUP_SUFFIX)
    elif engine == "crio":
        path = config or CRIO_DROPIN
        out.append((path, *apply(path, None, dry_run)))
    elif engine != "podman":
        raise InstallError(f"unknown runtime {engine!r} (containerd, crio or podman)")
    if engine in ("crio", "podman"):
        for name in hook_files("rewarm-hook", None):
            path = os.path.join(hooks_dir or HOOKS_DIR, name)
            out.append((path, *apply(path, None, dry_run)))
    return out


def _handler_binary(text: str) -> str | None:
    handler = _runtimes(text)[2].get(HANDLER)
    return str(handler.get("options", {}).get("BinaryName", "")) if handler is not None else None
