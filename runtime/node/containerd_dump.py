"""What containerd itself makes of a config: `containerd --config FILE config dump`, the merged
config with imports followed and containerd's defaults filled in, as the daemon would start with.
It is the last word on where a handler must go; rewarm's own reading (containerd_layout) only
decides where to write, and this judges the result."""
from __future__ import annotations

import re
import subprocess
from dataclasses import dataclass
from typing import Any

import tomlkit
import tomlkit.exceptions

from runtime.model.errors import InstallError
from runtime.node import config_files
from runtime.node import containerd_config as cc
from runtime.node import containerd_layout as layout

TIMEOUT_S = 30


def _run(binary: str, args: list[str]) -> subprocess.CompletedProcess[str]:
    # From `/`, as systemd starts containerd: 1.x takes a relative glob import from its working directory.
    try:
        return subprocess.run([binary, *args], capture_output=True, text=True, timeout=TIMEOUT_S, cwd="/")
    except (OSError, subprocess.TimeoutExpired) as e:
        raise InstallError(f"{binary} {' '.join(args)}: {e}") from e


def major(binary: str) -> tuple[int, str]:
    """containerd's major version and its version string (`containerd --version`: 1.6.20~ds1,
    v2.1.9, v1.7.23-k3s1)."""
    out = _run(binary, ["--version"]).stdout.split()
    found = re.match(r"v?(\d+)\.\d+", out[2]) if len(out) > 2 else None
    if not found:
        raise InstallError(f"{binary} --version does not say a containerd version: {' '.join(out)[:200]!r}")
    return int(found.group(1)), out[2]


@dataclass(frozen=True)
class Dump:
    """The merged config containerd would run with, and who said so."""
    version: int
    doc: dict[str, Any]
    by: str                  # "containerd 1.6.20 (/usr/bin/containerd)"

    def containerd(self) -> dict[str, Any]:
        """The CRI `containerd` table: default handler, runtimes (with containerd's defaults)."""
        return cc.cri_section(self.doc, self.version)

    def handler(self) -> dict[str, Any] | None:
        found = (self.containerd().get("runtimes") or {}).get(cc.HANDLER)
        return found if isinstance(found, dict) else None


def dump(binary: str, config: str) -> Dump:
    """`containerd --config CONFIG config dump`; a config it cannot load is refused with its words."""
    _, said = major(binary)
    out = _run(binary, ["--config", config, "config", "dump"])
    by = f"containerd {said} ({binary})"
    if out.returncode != 0:
        reason = " ".join(line.strip() for line in (out.stderr or out.stdout).strip().splitlines()[-3:])
        raise InstallError(f"{by} cannot load {config}: {reason[-600:]}")
    try:
        doc: dict[str, Any] = tomlkit.parse(out.stdout).unwrap()
    except tomlkit.exceptions.TOMLKitError as e:
        raise InstallError(f"{by}: `config dump` of {config} is not TOML: {e}") from e
    return Dump(int(doc.get("version") or 2), doc, by)


@dataclass(frozen=True)
class Reader:
    """The containerd whose reading of a flavor's config counts (None: none usable, the files are
    parsed), the import rules that apply (its major version), and what the user should know."""
    binary: str | None
    major: int
    note: str = ""


def reader(flavor: layout.Flavor) -> Reader:
    """The flavor's containerd, where it can read the config: a 1.x one loads a version 3 config
    without a word and ignores every CRI key in it, so it is not that config's reader (the node's
    2.x may be off PATH)."""
    v3 = cc.says_version(config_files.read(flavor.config) or "") == 3
    binary = layout.binary_of(flavor)
    if binary:
        found, said = major(binary)
        if found >= 2 or not v3:
            return Reader(binary, found)
        return Reader(None, 2, f"containerd {said} ({binary}) is 1.x, which ignores a version 3 config: the files "
                               "were parsed, not dumped by containerd (pass --containerd with the node's 2.x)")
    guess = 2 if v3 else 1
    return Reader(None, guess, f"no containerd binary found ({', '.join(flavor.binaries)}): the files were parsed, "
                                f"not dumped by containerd, with containerd {guess}.x's import rules "
                                "(pass --containerd)")
