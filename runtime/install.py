"""`thaw install`: make a container engine offer thaw as a runtime handler named `thaw`.

containerd: a runtime `thaw` next to `runc` in the CRI plugin's config (runc v2 shim with
BinaryName = thaw-runc, thaw.dev/* pod and container annotations passed through), copying runc's
own options so that both handlers run containers alike. The file is edited in place with tomlkit,
which keeps its comments and layout; the old file is kept as a backup; the diff is printed.
CRI-O: a drop-in under crio.conf.d. CRI-O and Podman: thaw-hook's prestart and poststop in their
hooks.d. All idempotent: a second run changes nothing.
"""
from __future__ import annotations

import difflib
import json
import os
import shutil
import tempfile

import tomlkit
from tomlkit.items import Table

from runtime.annotations import KNOWN, PREFIX
from runtime.errors import ThawError

HANDLER = "thaw"
CRI_PLUGIN = {2: "io.containerd.grpc.v1.cri", 3: "io.containerd.cri.v1.runtime"}
CONTAINERD_CONFIG = "/etc/containerd/config.toml"
CRIO_DROPIN = "/etc/crio/crio.conf.d/50-thaw.conf"
HOOKS_DIR = "/usr/share/containers/oci/hooks.d"      # where CRI-O and Podman look by default
HOOK_TEMPLATES = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "config", "hooks.d")
BACKUP_SUFFIX = ".thaw-backup"


class InstallError(ThawError):
    pass


def _table(parent: Table, key: str) -> Table:
    if key not in parent:
        parent[key] = tomlkit.table(is_super_table=True)
    return parent[key]


def _indent_like(table: Table, model: Table) -> None:
    """Indent the new table's keys like runc's, with a blank line after each part."""
    depth = len(model.trivia.indent)
    table["options"].add(tomlkit.nl())
    table["options"].indent(depth + 4)
    table.indent(depth + 2)
    table.trivia.indent = ""                               # the header sits under its parent by itself
    table["options"].trivia.indent = model.trivia.indent + "  "


def containerd_config(text: str, binary: str, version: int | None = None) -> str:
    """The config text with the thaw handler in it. `version` 3 writes containerd 2.x's form for a
    new or empty file; an existing file keeps its own version."""
    doc = tomlkit.parse(text)
    have = doc.get("version")
    if have is None and doc.get("plugins"):
        raise InstallError("containerd config version 1 is not supported: convert it to version 2 first "
                           "(start from `containerd config default`)")
    version = int(have) if have is not None else (version or 2)
    if version not in CRI_PLUGIN:
        raise InstallError(f"containerd config version {version} is not supported (2: containerd 1.x, 3: 2.x)")
    if have is None:
        doc["version"] = version
    runtimes = _table(_table(_table(_table(doc, "plugins"), CRI_PLUGIN[version]), "containerd"), "runtimes")
    if "runc" not in runtimes:  # CRI refuses a config whose default runtime (runc) is not defined
        runc = tomlkit.table()
        runc["runtime_type"] = "io.containerd.runc.v2"
        runtimes["runc"] = runc
    base = runtimes["runc"].unwrap()
    options = {**(base.get("options") or {}), "BinaryName": binary}
    thaw = tomlkit.table()
    for key, value in base.items():
        if key != "options":
            thaw[key] = value
    thaw["runtime_type"] = "io.containerd.runc.v2"
    thaw["pod_annotations"] = [PREFIX + "*"]
    thaw["container_annotations"] = [PREFIX + "*"]
    thaw.add(tomlkit.nl())
    thaw["options"] = options
    _indent_like(thaw, runtimes["runc"])
    if HANDLER in runtimes and runtimes[HANDLER].unwrap() == thaw.unwrap():
        return text
    runtimes[HANDLER] = thaw
    return tomlkit.dumps(doc)


def crio_dropin(binary: str) -> str:
    doc = tomlkit.document()
    doc.add(tomlkit.comment("thaw: restore AI inference workers from snapshots (written by `thaw install`)"))
    runtime = tomlkit.table()
    runtime["runtime_path"] = binary
    runtime["runtime_type"] = "oci"
    runtime["runtime_root"] = "/run/runc"
    runtime["allowed_annotations"] = sorted(KNOWN)
    doc["crio"] = {"runtime": {"runtimes": {HANDLER: runtime}}}
    return tomlkit.dumps(doc)


def _atomic_write(path: str, text: str, mode: int) -> None:
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path) or ".", prefix=".thaw-")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


def apply(path: str, new: str, dry_run: bool) -> tuple[bool, str]:
    """Write `new` to `path` unless equal; returns (changed, unified diff). The previous file is kept
    as path + BACKUP_SUFFIX."""
    try:
        with open(path, encoding="utf-8") as f:
            old = f.read()
        mode = os.stat(path).st_mode & 0o777
    except FileNotFoundError:
        old, mode = "", 0o644
    diff = "".join(difflib.unified_diff(old.splitlines(True), new.splitlines(True), path, path + " (thaw)"))
    if old == new or dry_run:
        return old != new, diff
    if old:
        shutil.copy2(path, path + BACKUP_SUFFIX)
    _atomic_write(path, new, mode)
    return True, diff


def default_binary(name: str = "thaw-runc") -> str:
    found = shutil.which(name)
    if not found:
        raise InstallError(f"{name} is not on PATH: pass --binary")
    return os.path.abspath(found)


def hook_files(hook: str, thaw_config: str | None) -> dict[str, str]:
    """hooks.d files (OCI hooks config 1.0.0) for thaw-hook prestart and poststop, from config/hooks.d."""
    out = {}
    for name in sorted(os.listdir(HOOK_TEMPLATES)):
        config = json.loads(open(os.path.join(HOOK_TEMPLATES, name), encoding="utf-8").read())
        config["hook"]["path"] = hook
        if thaw_config:
            config["hook"]["env"] = [*config["hook"]["env"], f"THAW_CONFIG={thaw_config}"]
        out[name] = json.dumps(config, indent=2) + "\n"
    return out


def install(engine: str, config: str | None, binary: str | None, version: int | None, dry_run: bool,
            hooks_dir: str | None = None, thaw_config: str | None = None) -> list[tuple[str, bool, str]]:
    """Returns (path, changed, diff) for every file it (would) write."""
    writes: dict[str, str] = {}
    if engine == "containerd":
        path = config or CONTAINERD_CONFIG
        try:
            with open(path, encoding="utf-8") as f:
                text = f.read()
        except FileNotFoundError:
            text = ""
        writes[path] = containerd_config(text, binary or default_binary(), version)
    elif engine == "crio":
        writes[config or CRIO_DROPIN] = crio_dropin(binary or default_binary())
    elif engine != "podman":
        raise InstallError(f"unknown runtime {engine!r} (containerd, crio or podman)")
    if engine in ("crio", "podman"):  # their hooks.d runs thaw-hook; thaw-runc skips a hook already there
        hook = os.path.join(os.path.dirname(binary), "thaw-hook") if binary else default_binary("thaw-hook")
        for name, text in hook_files(hook, thaw_config).items():
            writes[os.path.join(hooks_dir or HOOKS_DIR, name)] = text
    return [(path, *apply(path, text, dry_run)) for path, text in writes.items()]
