"""Files a worker reads back after a restore: memory it gave back in its quiesce hook because the
node holds it on disk anyway (an LLM worker's weights, read back from the model files in its
resume hook). The quiesce hook's JSON answer names them:

    {"reload_files": ["/models/llm/model-00001-of-00004.safetensors", ...]}

rewarm finds each on the host through the container's bind mounts and warms it with the snapshot
(`rewarm warm`, `warm_after`, the restore's read-ahead), so that a warm restore is warm all through.
An engine preset (model/engines.py) names them instead, as the model directory on the engine's
command line: every file below it. The worker's answer is input from inside the container: only absolute paths under a bind mount are
taken, each must resolve (symlinks followed) to a regular file below that mount's source, and
anything else is left out with a reason. These files are never part of the snapshot, never written,
only read into the page cache; the worker checks they are still the files it left.
"""
from __future__ import annotations

import json
import os
import posixpath
import stat

from runtime.model.manifest import ReloadFile
from runtime.model.oci_spec import Spec, bind_mount_of

MAX_FILES = 4096
MAX_PATH = 4096


def named_in(answer: str) -> tuple[list[str], list[str]]:
    """The container paths a quiesce hook's answer names, and what was wrong with the rest."""
    try:
        raw = json.loads(answer) if answer.strip() else {}
    except (ValueError, RecursionError):   # plain text (or a nesting bomb) names no files
        return [], []
    named = raw.get("reload_files", []) if isinstance(raw, dict) else []
    if not isinstance(named, list):
        return [], ["reload_files is not a list"]
    paths, problems = [], []
    for p in named[:MAX_FILES]:
        if not isinstance(p, str) or not p.startswith("/") or len(p) > MAX_PATH or "\0" in p:
            problems.append(f"{str(p)[:80]!r} is not an absolute path")
        elif ".." in p.split("/"):
            problems.append(f"{p[:80]!r} climbs with '..'")
        else:
            paths.append("/" + posixpath.normpath(p).lstrip("/"))   # normpath keeps a leading "//"
    if len(named) > MAX_FILES:
        problems.append(f"{len(named) - MAX_FILES} more than {MAX_FILES} files")
    return paths, problems


def host_file(spec: Spec, container_path: str) -> tuple[str, int] | None:
    """The container path's regular file on the host and its size, if a bind mount holds it and it
    resolves to a file below that mount's source."""
    found = bind_mount_of(spec, container_path)
    if found is None:
        return None
    source, below = found
    root = os.path.realpath(source)
    real = os.path.realpath(os.path.join(root, below))
    if os.path.commonpath([root, real]) != root:
        return None
    return _regular(real)


def _regular(path: str) -> tuple[str, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (path, st.st_size) if stat.S_ISREG(st.st_mode) else None


def files_below(spec: Spec, container_dir: str) -> list[str]:
    """Container paths of the files below a directory of the container (through its bind mount)."""
    found = bind_mount_of(spec, container_dir)
    if found is None:
        return [container_dir]   # not under a bind mount: resolve() says so
    source, below = found
    top = os.path.join(source, below)
    if not os.path.isdir(top):
        return [container_dir]
    out = []
    for parent, dirs, names in os.walk(top):
        dirs.sort()
        for name in sorted(names):
            out.append(posixpath.join(container_dir, os.path.relpath(os.path.join(parent, name), top)))
            if len(out) >= MAX_FILES:
                return out
    return out


def resolve(spec: Spec, answers: list[str],
            reads_back: tuple[str, ...] = ()) -> tuple[tuple[ReloadFile, ...], list[str]]:
    """The files a capture records for the worker's hook answers and the paths its engine preset
    names (files, or directories: each file below), and why others were left out."""
    paths, problems = [], []
    for answer in answers:
        named, wrong = named_in(answer)
        paths += named
        problems += wrong
    for p in reads_back:
        paths += files_below(spec, p)
    found: dict[str, ReloadFile] = {}     # by host path: two names of one file count once
    for p in dict.fromkeys(paths):
        host = host_file(spec, p)
        if host is None:
            problems.append(f"{p[:200]} is not a regular file under a bind mount of the container")
        else:
            found.setdefault(host[0], ReloadFile(p, *host))
    return tuple(found.values()), problems


def on_this_node(files: tuple[ReloadFile, ...], spec: Spec | None = None) -> list[tuple[str, int]]:
    """Host paths and sizes of the files as they are here and now: through a restoring container's
    mounts when there is one, else where the capture found them (and no link leads there now); only
    regular files of the recorded size (a manifest may come from another node)."""
    out = []
    for f in files:
        if spec is not None:
            found = host_file(spec, f.path)
        else:
            found = _regular(f.host) if os.path.realpath(f.host) == f.host else None
        if found is not None and found[1] == f.size:
            out.append(found)
    return out


def missing(files: tuple[ReloadFile, ...], spec: Spec) -> list[str]:
    """The container paths of the files that a restoring container does not have as captured."""
    return [f.path for f in files if not on_this_node((f,), spec)]
