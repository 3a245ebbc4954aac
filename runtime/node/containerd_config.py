"""The text of containerd's config files as rewarm writes it: the `rewarm` handler as one marked
block, and what a parsed config says. No file is read or written here.

rewarm's part of a file is one block between two marker comments, appended after the node's own
text in the file's own line endings (CRLF stays CRLF): taking it out again gives the node's bytes
back, and no other line of the file is re-serialised (a TOML library rewriting a document changes
quoting, line endings and dotted keys it did not mean to touch). The block names its tables by
their full path (`[plugins."…".containerd.runtimes.rewarm]`), which TOML allows after any layout
of the parents: headed tables, dotted keys (`runtimes.runc.options.X = …`), both. Only an inline
table (`runtimes = { … }`) closes a table to later additions: such a file is refused.
"""
from __future__ import annotations

import os
import re
from typing import Any

import tomlkit
import tomlkit.exceptions

from runtime.model.annotations import PREFIX
from runtime.model.errors import InstallError

HANDLER = "rewarm"
RUNC_SHIM = "io.containerd.runc.v2"
# The CRI runtime plugin's table by config version: 2 (containerd 1.x, read by 2.x too) and 3 (2.x).
CRI_PLUGIN = {2: "io.containerd.grpc.v1.cri", 3: "io.containerd.cri.v1.runtime"}
BEGIN = "# rewarm: begin (written by `rewarm install`; `rewarm uninstall` takes it out)"
END = "# rewarm: end"
# The first line of a file rewarm created: `rewarm uninstall` removes such a file whole. In a Go
# template (k3s's, RKE2's) it is a template comment: it must not reach the config rendered from it.
OWN_FILE = "# rewarm: this file is rewarm's (`rewarm install` wrote it; `rewarm uninstall` removes it)"
OWN_TEMPLATE = "{{/* rewarm: this template is rewarm's (`rewarm install` wrote it; `rewarm uninstall` removes it) */}}"


def own(text: str) -> bool:
    """Whether rewarm created the file (a drop-in, a template)."""
    return text.startswith((OWN_FILE, OWN_TEMPLATE))
# In a containerd 1.x drop-in of rewarm's: the file whose CRI table it carries a copy of.
COPIED = "# rewarm: copied from "
# A file without `version` is version 1 to containerd: rewarm's tables need the version said, before
# any table, so this one line goes at the top (and comes out with the block).
VERSION_NOTE = "  # rewarm: added with its handler (a config without version is version 1)"
ANNOTATIONS = [PREFIX + "*"]


def parse(text: str, where: str) -> dict[str, Any]:
    """The file as plain values; a file TOML cannot read is refused, naming it."""
    try:
        value: dict[str, Any] = tomlkit.parse(text).unwrap()
    except tomlkit.exceptions.TOMLKitError as e:
        raise InstallError(f"{where} is not valid TOML (containerd would not load it): {e}") from e
    return value


def version_of(doc: dict[str, Any], where: str, new: int = 2) -> int:
    """The config version a file is written in (`new` for one that says none and has no plugins).
    Version 1 (plugins, no `version`) is refused: its CRI layout is another, and 2.x drops it."""
    have = doc.get("version")
    if have is None:
        if doc.get("plugins"):
            raise InstallError(f"{where}: containerd config version 1 is not supported: convert it to version 2 "
                               "first (start from `containerd config default`)")
        return new
    if have not in CRI_PLUGIN:
        raise InstallError(f"{where}: containerd config version {have} is not supported (2: containerd 1.x, 3: 2.x)")
    return int(have)


def says_version(text: str) -> int | None:
    """The version a config says, without judging it (one that does not parse: None, for
    containerd to judge)."""
    try:
        said = parse(text, "containerd config").get("version")
    except InstallError:
        return None
    return said if isinstance(said, int) else None


def newline_of(text: str) -> str:
    """The line ending the file uses (CRLF where its first line ends so), for the lines rewarm adds."""
    first = text.find("\n")
    return "\r\n" if first > 0 and text[first - 1] == "\r" else "\n"


def cri_section(doc: dict[str, Any], version: int) -> dict[str, Any]:
    """The CRI runtime plugin's `containerd` table (default handler, runtimes) of a config."""
    plugin = (doc.get("plugins") or {}).get(CRI_PLUGIN[version]) or {}
    found = plugin.get("containerd") if isinstance(plugin, dict) else None
    return found if isinstance(found, dict) else {}


def base_handler(containerd: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """The handler rewarm's copies and chains to: the default one where it is a runc shim (NVIDIA's
    toolkit makes `nvidia` the default, with nvidia-container-runtime as its binary), else runc
    (rewarm-runc stands in for runc: a kata or gVisor default says nothing about how to run runc)."""
    runtimes = containerd.get("runtimes") or {}
    default = str(containerd.get("default_runtime_name") or "runc")
    for name in (default, "runc"):
        settings = runtimes.get(name)
        if name != HANDLER and isinstance(settings, dict) and settings.get("runtime_type", RUNC_SHIM) == RUNC_SHIM:
            return name, settings
    return "runc", {"runtime_type": RUNC_SHIM}   # containerd's built-in runc


def chained_binary(settings: dict[str, Any]) -> str | None:
    """The runtime a handler's runc shim runs (its BinaryName: crun, nvidia-container-runtime);
    None for the shim's own default, runc from PATH."""
    options = settings.get("options") or {}
    return str(options.get("BinaryName") or "") or None


def fits(runtime: str, chained: str | None) -> bool:
    """Whether rewarm-runc running `runtime` runs containers as the base handler does: its binary;
    where it names none (the shim runs runc from PATH), any runc (rewarm's bundle brings its own,
    the one its restores are tested with)."""
    return runtime == chained if chained else os.path.basename(runtime) == "runc"


def handler_settings(base: dict[str, Any], binary: str) -> dict[str, Any]:
    """The `rewarm` handler: the base handler's settings and options (cgroup driver, runtime root,
    its own annotations), through the runc shim with rewarm-runc as its binary, and rewarm's
    annotations passed to the runtime."""
    settings = {k: v for k, v in base.items() if k != "options"}
    settings["runtime_type"] = RUNC_SHIM
    for key in ("pod_annotations", "container_annotations"):
        settings[key] = [*(a for a in base.get(key) or [] if a not in ANNOTATIONS), *ANNOTATIONS]
    settings["options"] = {**(base.get("options") or {}), "BinaryName": binary}
    return settings


def handlers(containerd: dict[str, Any], binary: str) -> dict[str, dict[str, Any]]:
    """The runtimes rewarm's block defines: `rewarm`, and runc where the config defines no runtimes
    map: containerd 1.x then takes the block's map for the whole one, and its built-in runc (the
    default handler) would be gone, which CRI refuses to start with."""
    _, base = base_handler(containerd)
    out = {HANDLER: handler_settings(base, binary)}
    runtimes = containerd.get("runtimes") or {}
    if str(containerd.get("default_runtime_name") or "runc") == "runc" and "runc" not in runtimes:
        out["runc"] = {"runtime_type": RUNC_SHIM}
    return out


def _value(value: Any) -> str:
    if isinstance(value, dict):
        table = tomlkit.inline_table()
        table.update(value)
        return str(table.as_string())
    if isinstance(value, list):
        return "[" + ", ".join(_value(v) for v in value) + "]"
    return str(tomlkit.item(value).as_string())


def _tables(path: list[str], table: dict[str, Any], depth: int) -> list[str]:
    """`table` as TOML lines under full headers; a parent with nothing of its own gets no header
    (it may be defined in the file already, and a table must not be defined twice)."""
    scalars = {k: v for k, v in table.items() if not isinstance(v, dict)}
    lines = []
    if scalars or not table:
        lines.append("  " * depth + "[" + ".".join(tomlkit.key(p).as_string() for p in path) + "]")
        lines += ["  " * (depth + 1) + f"{tomlkit.key(k).as_string()} = {_value(v)}" for k, v in scalars.items()]
    for key, sub in table.items():
        if isinstance(sub, dict):
            lines += _tables([*path, key], sub, depth + 1 if scalars else depth)
    return lines


def block(version: int, runtimes: dict[str, dict[str, Any]], nl: str, cri: dict[str, Any] | None = None) -> str:
    """rewarm's marked block in `nl` line endings: the runtimes (rewarm's handler, runc where
    needed), or, where `cri` is given, the whole CRI plugin table with them in it (what a drop-in
    must carry under containerd 1.x, which takes that table whole from the last file with one)."""
    if cri is None:
        lines = [line for name, settings in runtimes.items()
                 for line in _tables(["plugins", CRI_PLUGIN[version], "containerd", "runtimes", name], settings, 0)]
    else:
        containerd = dict(cri.get("containerd") or {})
        containerd["runtimes"] = {**(containerd.get("runtimes") or {}), **runtimes}
        lines = _tables(["plugins", CRI_PLUGIN[version]], {**cri, "containerd": containerd}, 0)
    return nl.join([BEGIN, *lines, END]) + nl


_VERSION_LINE = re.compile(r"\Aversion = [23]" + re.escape(VERSION_NOTE) + r"\r?\n")


def _span(text: str) -> tuple[int, int] | None:
    """Where rewarm's block is in `text` (with the blank line install put before it), or None. A
    begin marker without its end is a file rewarm cannot edit safely."""
    start = text.find(BEGIN)
    if start < 0:
        return None
    end = text.find(END, start)
    if end < 0:
        raise InstallError(f"rewarm's block has its begin marker but no `{END}` (edited by hand?): "
                           "take the rest of the block out by hand")
    end = text.find("\n", end)
    end = len(text) if end < 0 else end + 1
    for sep in ("\r\n\r\n", "\n\n"):
        if text[:start].endswith(sep):
            return start - len(sep) // 2, end
    return start, end


def has_block(text: str) -> bool:
    return _span(text) is not None or bool(_VERSION_LINE.match(text))


def without_block(text: str) -> str:
    """`text` less rewarm's block (and the blank line before it) and the version line it added."""
    span = _span(text)
    if span is not None:
        text = text[:span[0]] + text[span[1]:]
    return _VERSION_LINE.sub("", text, count=1)


def with_block(text: str, new_block: str, version: int) -> str:
    """`text` (less any block of rewarm's) with `new_block` after it, a blank line between, and the
    version said at the top where the file says none."""
    rest = without_block(text)
    nl = "\r\n" if new_block.endswith("\r\n") else "\n"
    if "version" not in parse(rest, "containerd config"):
        rest = f"version = {version}{VERSION_NOTE}{nl}" + rest
    if not rest.endswith("\n"):
        rest += nl
    return rest + nl + new_block


def unmarked_handler(text: str, where: str) -> bool:
    """Whether the file defines a `rewarm` handler outside rewarm's block (an earlier rewarm put it
    beside runc, unmarked)."""
    doc = parse(without_block(text), where)
    return any(HANDLER in (cri_section(doc, v).get("runtimes") or {}) for v in CRI_PLUGIN)


def without_unmarked_handler(text: str, where: str) -> str:
    """The file less an unmarked `rewarm` handler. The one edit through tomlkit's document (it is how
    the earlier rewarm wrote it); where that leaves one, the layout is refused."""
    doc = tomlkit.parse(text)
    for plugin in CRI_PLUGIN.values():
        runtimes = doc.get("plugins", {}).get(plugin, {}).get("containerd", {}).get("runtimes", {})
        if HANDLER in runtimes:
            del runtimes[HANDLER]
    out = tomlkit.dumps(doc)
    if unmarked_handler(out, where):
        raise InstallError(f"{where}: cannot take out its `rewarm` handler (a layout rewarm cannot edit safely): "
                           "remove it by hand, then run `rewarm install` again")
    return out


def node_text(text: str, where: str) -> str:
    """The file as the node has it without rewarm: no block, no handler of an earlier rewarm."""
    text = without_block(text)
    return without_unmarked_handler(text, where) if unmarked_handler(text, where) else text


def check_block(text: str, version: int, binary: str, where: str) -> None:
    """The edited text must read back with the handler where containerd looks for it (an inline
    table in the way makes TOML refuse the block's header)."""
    try:
        doc = tomlkit.parse(text).unwrap()
    except tomlkit.exceptions.TOMLKitError as e:
        raise InstallError(f"{where}: its layout leaves no place for rewarm's handler ({e}); a CRI table written "
                           "inline (`runtimes = {{ ... }}`) cannot take another key: write it as [tables]") from e
    handler = (cri_section(doc, version).get("runtimes") or {}).get(HANDLER) or {}
    if (handler.get("options") or {}).get("BinaryName") != binary:
        raise InstallError(f"{where}: rewarm's handler does not read back from the edited file (a layout rewarm "
                           "cannot edit safely); nothing was changed")


def containerd_config(text: str, binary: str, version: int | None = None) -> str:
    """One config file with the rewarm handler in it, judged alone (no imports followed): the
    handler copies the file's default handler (else runc). `version` 3 writes containerd 2.x's
    form into a file that says no version; a file that says one keeps it."""
    where = "containerd config"
    text = node_text(text, where)
    doc = parse(text, where)
    v = version_of(doc, where, version or 2)
    nl = newline_of(text)
    new = with_block(text, block(v, handlers(cri_section(doc, v), binary), nl), v)
    check_block(new, v, binary, where)
    return new
