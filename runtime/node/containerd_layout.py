"""Where a node's containerd keeps its config, which files it reads, and what it makes of them.

Flavors: containerd itself (/etc/containerd/config.toml), k3s and RKE2 (containerd's config is
rendered from a Go template at every start of k3s / RKE2, so only the template is the node's own),
and k0s (a generated config that imports /etc/k0s/containerd.d drop-ins, merged by k0s).

The files containerd reads are its config and its `imports`, breadth first, each once, as
containerd's loader walks them. How they merge depends on containerd's major version, not on the
config version:
- containerd 1.x: a file's table of a plugin REPLACES the table of that plugin read before
  (plugins are merged whole), and a relative glob is taken from containerd's working directory
  (`/` under systemd);
- containerd 2.x: tables merge key by key (a later value wins, a list is replaced, not appended),
  a relative glob is taken from the importing file's directory, and the merged document is read in
  the highest version any file says: keys of a lower version in it are ignored, not migrated.
"""
from __future__ import annotations

import fnmatch
import glob
import os
import shutil
import socket
import stat
from dataclasses import dataclass, replace
from typing import Any

from runtime.model.errors import InstallError
from runtime.node import config_files
from runtime.node import containerd_config as cc

DROPIN = "99-rewarm.toml"   # sorts after NVIDIA's 99-nvidia.toml: under containerd 1.x the last table wins
K0S_MANAGED = "# k0s_managed=true"


@dataclass(frozen=True)
class Flavor:
    """One way a node runs containerd. `config`: the file containerd is started with (k3s, RKE2:
    the one they render; k0s: its generated config); `binaries`: the containerd that reads it,
    first found wins; `units`: the systemd units that restart it, first installed wins."""
    name: str
    config: str
    socket: str
    binaries: tuple[str, ...]
    units: tuple[str, ...]
    template: bool = False     # k3s, RKE2: config is rendered at start from a template beside it
    dropins: bool = False      # k0s: containerd.d beside config, merged by k0s into what containerd reads


FLAVORS = {
    "containerd": Flavor("containerd", "/etc/containerd/config.toml", "/run/containerd/containerd.sock",
                         ("containerd",), ("containerd",)),
    # k3s and RKE2 share the socket path; their data directories tell them apart.
    "k3s": Flavor("k3s", "/var/lib/rancher/k3s/agent/etc/containerd/config.toml", "/run/k3s/containerd/containerd.sock",
                  ("/var/lib/rancher/k3s/data/current/bin/containerd",), ("k3s", "k3s-agent"), template=True),
    "rke2": Flavor("rke2", "/var/lib/rancher/rke2/agent/etc/containerd/config.toml",
                   "/run/k3s/containerd/containerd.sock", ("/var/lib/rancher/rke2/bin/containerd",),
                   ("rke2-server", "rke2-agent"), template=True),
    "k0s": Flavor("k0s", "/etc/k0s/containerd.toml", "/run/k0s/containerd.sock", ("/var/lib/k0s/bin/containerd",),
                  ("k0sworker", "k0scontroller"), dropins=True),
}
UNIT_DIRS = ("/etc/systemd/system", "/usr/local/lib/systemd/system", "/usr/lib/systemd/system", "/lib/systemd/system")


def _is_socket(path: str) -> bool:
    try:
        return stat.S_ISSOCK(os.stat(path).st_mode)
    except OSError:
        return False


def detect(root: str = "/") -> Flavor | None:
    """The containerd that kubelet most likely talks to on this node: a Kubernetes distribution's
    own (k3s, RKE2, k0s) before a plain one (a node may also run Docker's containerd beside k3s's,
    and kubelet of k3s uses k3s's); a live socket first, else the config it leaves on disk."""
    def at(path: str) -> str:
        return os.path.join(root, path.lstrip("/"))
    order = [FLAVORS[n] for n in ("k3s", "rke2", "k0s", "containerd")]
    # k3s's and RKE2's socket is the same path: the flavor is the one whose config directory exists.
    for flavor in order:
        if _is_socket(at(flavor.socket)) and (not flavor.template or os.path.isdir(at(os.path.dirname(flavor.config)))):
            return flavor
    for flavor in order:
        if os.path.exists(at(flavor.config)):
            return flavor
    return None


def named_by(config: str) -> Flavor:
    """The flavor a config path belongs to, where it is one of theirs (a copy elsewhere: containerd)."""
    path = os.path.abspath(config)
    for flavor in (FLAVORS[n] for n in ("k3s", "rke2", "k0s")):
        if path.endswith(flavor.config):
            return flavor
    return FLAVORS["containerd"]


def crio_running(root: str = "/") -> bool:
    return any(_is_socket(os.path.join(root, p)) for p in ("run/crio/crio.sock", "var/run/crio/crio.sock"))


def binary_of(flavor: Flavor) -> str | None:
    """The containerd binary that reads this flavor's config: a path, or a name looked up on PATH
    (only plain containerd's: another containerd on PATH may be Docker's, of another version)."""
    for candidate in flavor.binaries:
        if os.sep not in candidate:
            found = shutil.which(candidate)
            if found:
                return found
        elif os.access(candidate, os.X_OK):
            return candidate
    return None


def restart_command(flavor: Flavor, root: str = "/") -> str:
    """The shell command that restarts the flavor on this node: its installed systemd unit; where
    none is found, each of its units in turn (k3s on a server, k3s-agent on an agent)."""
    for unit in flavor.units:
        if any(os.path.exists(os.path.join(root, d.lstrip("/"), unit + ".service")) for d in UNIT_DIRS):
            return f"systemctl restart {unit}"
    return " || ".join(f"systemctl restart {unit}" for unit in flavor.units)


def listening(path: str) -> bool:
    """Whether something accepts connections on the unix socket (a live containerd)."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(2)
        try:
            s.connect(path)
        except OSError:
            return False
    return True


def with_overrides(flavor: Flavor, config: str | None, binary: str | None) -> Flavor:
    return replace(flavor, config=os.path.abspath(config) if config else flavor.config,
                   binaries=(binary,) if binary else flavor.binaries)


# -- the files containerd reads -------------------------------------------------------------------


@dataclass(frozen=True)
class Source:
    """One file containerd reads: its path as containerd names it, the node's text of it (less
    anything of rewarm's), its values, and the glob that brought it in (None: the config itself,
    or an import by name)."""
    path: str
    text: str
    doc: dict[str, Any]
    pattern: str | None
    own: bool                # a file rewarm created


def _glob(parent: str, path: str, major: int) -> str:
    base = os.path.dirname(parent) if major >= 2 else "/"
    return os.path.normpath(os.path.join(base, path))


def _imports(parent: str, doc: dict[str, Any], major: int) -> list[tuple[str, str | None]]:
    imports = doc.get("imports") or []
    if not isinstance(imports, list):
        raise InstallError(f"{parent}: `imports` is not a list (containerd would not load it)")
    out: list[tuple[str, str | None]] = []
    for item in imports:
        path = str(item)
        if "*" in path:         # containerd globs a path with a star, and takes any other as it is
            pattern = _glob(parent, path, major)
            out += [(p, pattern) for p in sorted(glob.glob(pattern))]
        else:
            out.append((os.path.normpath(os.path.join(os.path.dirname(parent), path)), None))
    return out


def globs(main: Source, major: int) -> list[str]:
    """The config's glob imports, as absolute patterns, in its order (also those matching nothing
    yet: their directory may take rewarm's drop-in)."""
    return [_glob(main.path, str(p), major) for p in main.doc.get("imports") or [] if "*" in str(p)]


def sources(config: str, major: int, as_is: bool = False) -> list[Source]:
    """The files containerd reads for `config`, in its order: the config, then the imports breadth
    first; their text less anything of rewarm's (`as_is`: with it). A missing config is an empty one
    (containerd's defaults); a missing import by name fails containerd 1.x, 2.x skips it."""
    pending: list[tuple[str, str | None]] = [(os.path.abspath(config), None)]
    seen: set[str] = set()
    out: list[Source] = []
    while pending:
        path, pattern = pending.pop(0)
        if path in seen:
            continue
        seen.add(path)
        raw = config_files.read(path)
        if raw is None and out:
            if major >= 2:
                continue
            raise InstallError(f"{out[0].path} imports {path}, which does not exist: containerd 1.x would not load it")
        raw = raw or ""
        own = cc.own(raw)
        # Only the config itself can hold an earlier rewarm's unmarked handler; one in another file
        # (NVIDIA's toolkit copies what `config dump` shows) is that file's owner's.
        text = raw if as_is else "" if own else cc.node_text(raw, path) if not out else cc.without_block(raw)
        doc = cc.parse(text, path)
        out.append(Source(path, text, doc, pattern, own))
        pending += _imports(path, doc, major)
    return out


def _merge(into: Any, value: Any) -> Any:
    if isinstance(into, dict) and isinstance(value, dict):
        out = dict(into)
        for key, item in value.items():
            out[key] = _merge(out.get(key), item)
        return out
    return value


def version(files: list[Source], new: int = 2) -> int:
    """The version containerd reads the merged files in: the highest any file says (1.x reads only
    version 2; a version 1 config is refused); `new` where none says one."""
    cc.version_of(files[0].doc, files[0].path)
    said = [cc.version_of(s.doc, s.path) for s in files if "version" in s.doc]
    return max(said) if said else new


def merged(files: list[Source], major: int) -> dict[str, Any]:
    """The files' values as containerd merges them (before its own defaults)."""
    out: dict[str, Any] = {}
    for s in files:
        for key, value in s.doc.items():
            if key == "plugins" and major < 2 and isinstance(value, dict):
                out["plugins"] = {**out.get("plugins", {}), **value}   # 1.x: a plugin's table replaces the one before
            else:
                out[key] = _merge(out.get(key), value)
    return out


def cri(files: list[Source], major: int) -> dict[str, Any]:
    """The merged config's CRI `containerd` table (default handler, runtimes)."""
    return cc.cri_section(merged(files, major), version(files))


# -- where the handler goes -----------------------------------------------------------------------


@dataclass(frozen=True)
class Place:
    """Where rewarm's block goes: `path` (`own`: a file rewarm creates), in config `version`;
    `copy`: the CRI table a 1.x drop-in must carry whole, and the file it comes from."""
    path: str
    version: int
    own: bool
    copy: dict[str, Any] | None = None
    copied_from: str = ""


def _dropin_in(pattern: str) -> str | None:
    """rewarm's drop-in in the directory a glob import reads, named to match the glob."""
    directory, name = os.path.split(pattern)
    if "*" in directory or not os.path.isdir(directory):
        return None
    for candidate in (DROPIN, "99-rewarm" + name[1:] if name.startswith("*") and "*" not in name[1:] else ""):
        if candidate and fnmatch.fnmatch(candidate, name):
            return os.path.join(directory, candidate)
    return None


def _cri_owner(files: list[Source]) -> Source | None:
    """containerd 1.x: the last file with a CRI plugin table; its table is the one containerd uses."""
    owners = [s for s in files if cc.CRI_PLUGIN[2] in (s.doc.get("plugins") or {})]
    return owners[-1] if owners else None


def place(files: list[Source], major: int, new: int = 2) -> Place:
    """The one decision where rewarm's handler goes so that containerd really has it (`new`: the
    version of a config that is not there yet):
    - containerd 2.x: in a drop-in of rewarm's in the directory of the config's last glob import
      (its conf.d), holding only the handler, which 2.x merges key by key into the rest; without
      such an import, in the config itself;
    - containerd 1.x, where the config itself has the last CRI table (or none has one): in the
      config;
    - containerd 1.x, where an imported file has the last CRI table (NVIDIA's 99-nvidia.toml): in a
      drop-in of rewarm's that loads right after that file, carrying that table whole with the
      handler added. 1.x takes a plugin's table from the last file that has one, whole: a handler in
      the config would be replaced by that file's table, and a drop-in with the handler alone would
      replace the node's CRI settings by nothing but the handler.
    Refused (1.x): that file imported by name, or one no drop-in of rewarm's sorts after."""
    node = [s for s in files if not s.own]
    main = node[0]
    v = version(node, new)
    if major >= 2:
        for pattern in reversed(globs(main, major)):
            path = _dropin_in(pattern)
            if path:
                return Place(path, v, own=True)
        return Place(main.path, v, own=False)
    owner = _cri_owner(node)
    if owner is None or owner is main:
        return Place(main.path, v, own=False)
    if owner.pattern is None:
        raise InstallError(f"the CRI table containerd 1.x uses is {owner.path}'s, imported by name: no drop-in of "
                           "rewarm's can load after it (1.x takes that table whole from the last file that has one); "
                           "import it through a glob (conf.d/*.toml), or put the CRI table in the config itself")
    path = _dropin_in(owner.pattern)
    if path is None:
        raise InstallError(f"the CRI table containerd 1.x uses is {owner.path}'s, read through the glob "
                           f"{owner.pattern}, which no drop-in of rewarm's ({DROPIN}) would match")
    if os.path.basename(path) <= os.path.basename(owner.path):
        raise InstallError(f"rewarm's drop-in {path} would load before {owner.path}, whose CRI table containerd 1.x "
                           f"takes whole: it cannot load after it; rename that file to sort before {DROPIN}")
    return Place(path, 2, own=True, copy=owner.doc["plugins"][cc.CRI_PLUGIN[2]], copied_from=owner.path)


def k0s_managed(text: str) -> bool:
    """k0s merges containerd.d drop-ins only into a config it still manages (its magic first line)."""
    return text.startswith(K0S_MANAGED)


def k0s_dropin(flavor: Flavor) -> str:
    return os.path.join(os.path.dirname(flavor.config), "containerd.d", DROPIN)


TEMPLATES = {3: "config-v3.toml.tmpl", 2: "config.toml.tmpl"}
BASE = '{{ template "base" . }}'


def template_path(flavor: Flavor, rendered_version: int) -> str:
    """The template k3s / RKE2 render containerd's config from: those on containerd 2.x read
    config-v3.toml.tmpl, else config.toml.tmpl; those on 1.x only config.toml.tmpl. Without a
    template they render their base, in the version of the config they rendered last: rewarm's
    template is the one of that version."""
    directory = os.path.dirname(flavor.config)
    v3, v2 = (os.path.join(directory, TEMPLATES[n]) for n in (3, 2))
    if rendered_version == 3 and os.path.exists(v3):
        return v3
    if os.path.exists(v2):
        return v2
    return v3 if rendered_version == 3 else v2


def rewarm_files(flavor: Flavor, files: list[Source], major: int) -> list[str]:
    """Every file something of rewarm's can be in for this flavor: what containerd reads, the
    templates, k0s's drop-in, and a drop-in in any directory a glob import reads."""
    out = [s.path for s in files if s.path]
    directory = os.path.dirname(flavor.config)
    if flavor.template:
        out += [os.path.join(directory, t) for t in TEMPLATES.values()]
    if flavor.dropins:
        out.append(k0s_dropin(flavor))
    patterns = [s.pattern for s in files if s.pattern] + (globs(files[0], major) if files else [])
    out += [p for p in (_dropin_in(g) for g in patterns) if p]
    return list(dict.fromkeys(out))
