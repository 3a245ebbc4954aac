"""`rewarm install` on containerd configs as nodes really have them (tests/system/containerd_configs):
NVIDIA's conf.d drop-in, a drop-in that owns the CRI table, dotted keys, CRLF, a symlinked config,
a runc handler running crun, k3s's and RKE2's templates, k0s's drop-ins. Each is judged by real
containerd binaries (`containerd config dump`, Debian's 1.6 and 2.1, where the layout applies to
that version): the `rewarm` handler is in the config containerd really loads, chained to the
runtime of the handler that is really the default; doctor's handler check judges that dumped
config; and `rewarm uninstall` gives every byte back (a symlink stays the same link). Layouts
rewarm cannot edit safely are refused with the reason, and nothing is written.

k3s and RKE2 render containerd's config from a template when they start, k0s merges its
containerd.d drop-ins into the config it generates: the tests do that step as they do it (render,
merge), then let containerd judge the result.
"""
from __future__ import annotations

import dataclasses
import json
import os
import re
import shutil
import socket
import subprocess
from dataclasses import dataclass
from typing import Any, Callable

import pytest
import tomlkit

from helpers import rewarm_cli
from runtime.lab import containerd_lab
from runtime.lab.containerd_lab import Lab
from runtime.lab.runc_lab import rewarm_runc
from runtime.node import containerd_layout, handler_check, install

FIXTURES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "containerd_configs")
CONTAINERDS = {"1.6": shutil.which("containerd") or "containerd",
               "2.1": os.path.join(containerd_lab.CONTAINERD_2_BIN, "containerd")}
CRI = {2: "io.containerd.grpc.v1.cri", 3: "io.containerd.cri.v1.runtime"}
BASE = '{{ template "base" . }}'
NVIDIA_TOOLKIT = "/usr/local/nvidia/toolkit/nvidia-container-runtime"


# -- a node's files -------------------------------------------------------------------------------


def crlf(root: str) -> None:
    path = os.path.join(root, "config.toml")
    with open(path, "rb") as f:
        data = f.read()
    with open(path, "wb") as f:
        f.write(data.replace(b"\n", b"\r\n"))


def linked(root: str) -> None:
    """The config at etc/containerd/config.toml as a relative link to a shared file."""
    os.makedirs(os.path.join(root, "etc", "containerd"))
    os.symlink("../../shared/containerd.toml", os.path.join(root, "etc", "containerd", "config.toml"))


def renamed_nvidia(root: str) -> None:
    os.rename(os.path.join(root, "conf.d", "99-nvidia.toml"), os.path.join(root, "conf.d", "zz-nvidia.toml"))


def by_name(root: str) -> None:
    """The CRI table in a file the config imports by name, not through a glob."""
    os.rename(os.path.join(root, "conf.d", "99-nvidia.toml"), os.path.join(root, "nvidia.toml"))
    path = os.path.join(root, "config.toml")
    text = open(path).read().replace(f'"{root}/conf.d/*.toml"', f'"{root}/nvidia.toml"')
    open(path, "w").write(text)


def missing_import(root: str) -> None:
    path = os.path.join(root, "config.toml")
    text = open(path).read().replace("/conf.d/*.toml", "/conf.d/10-gone.toml")
    open(path, "w").write(text)


def broken(root: str) -> None:
    with open(os.path.join(root, "config.toml"), "a") as f:
        f.write("[plugins\n")


def dangling(root: str) -> None:
    """The config a link to a file that is not there."""
    os.makedirs(os.path.join(root, "etc", "containerd"))
    os.symlink("../../shared/gone.toml", os.path.join(root, "etc", "containerd", "config.toml"))


def never_started(root: str) -> None:
    os.unlink(os.path.join(root, "var/lib/rancher/k3s/agent/etc/containerd/config.toml"))


@dataclass(frozen=True)
class Layout:
    """A node's containerd layout: its fixture, how rewarm is told about it, what it must chain to."""
    fixture: str
    runtime: str                    # --runtime
    config: str                     # the config containerd is started with, under the node's root
    chained: str = "runc"           # the runtime of the default handler, which rewarm-runc must run
    options: dict[str, Any] = dataclasses.field(default_factory=dict)   # the default handler's, copied
    prepare: Callable[[str], None] | None = None
    written: tuple[str, ...] = ()   # the file install writes, under the root (a link: its target)


K3S = "var/lib/rancher/k3s/agent/etc/containerd"
RKE2 = "var/lib/rancher/rke2/agent/etc/containerd"
LAYOUTS = {
    "nvidia-dropin": Layout("nvidia-v2", "containerd", "config.toml", NVIDIA_TOOLKIT, {"SystemdCgroup": True},
                            written=("conf.d/99-rewarm.toml",)),
    "nvidia-dropin-v3": Layout("nvidia-v3", "containerd", "config.toml", "/usr/bin/nvidia-container-runtime",
                               {"SystemdCgroup": True}, written=("conf.d/99-rewarm.toml",)),
    "cri-dropin": Layout("cri-dropin", "containerd", "config.toml", written=("conf.d/99-rewarm.toml",)),
    "symlink": Layout("symlink", "containerd", "etc/containerd/config.toml", options={"SystemdCgroup": True},
                      prepare=linked, written=("shared/containerd.toml",)),
    "dotted": Layout("dotted", "containerd", "config.toml",
                     options={"SystemdCgroup": True, "Root": "/tmp/rewarm-test-runc-root"}, written=("config.toml",)),
    "crlf": Layout("plain", "containerd", "config.toml", options={"SystemdCgroup": True}, prepare=crlf,
                   written=("config.toml",)),
    "crun": Layout("crun", "containerd", "config.toml", "/usr/bin/crun", {"SystemdCgroup": True},
                   written=("config.toml",)),
    "k3s-template": Layout("k3s-v2", "k3s", f"{K3S}/config.toml", options={"SystemdCgroup": True},
                           written=(f"{K3S}/config.toml.tmpl",)),
    "k3s-template-v3": Layout("k3s-v3", "k3s", f"{K3S}/config.toml", NVIDIA_TOOLKIT, {"SystemdCgroup": True},
                              written=(f"{K3S}/config-v3.toml.tmpl",)),
    "rke2-template": Layout("rke2-v3", "rke2", f"{RKE2}/config.toml", "/usr/bin/runc", {"SystemdCgroup": True},
                            written=(f"{RKE2}/config-v3.toml.tmpl",)),
    "k0s-dropin": Layout("k0s-v2", "k0s", "etc/k0s/containerd.toml", NVIDIA_TOOLKIT,
                         written=("etc/k0s/containerd.d/99-rewarm.toml",)),
    "k0s-dropin-v3": Layout("k0s-v3", "k0s", "etc/k0s/containerd.toml", NVIDIA_TOOLKIT,
                            written=("etc/k0s/containerd.d/99-rewarm.toml",)),
}
# Where each layout applies: a version 3 config is containerd 2.x's only.
CASES = [pytest.param(name, version, id=f"{name}-{version}") for name, versions in (
    ("nvidia-dropin", ("1.6", "2.1")), ("nvidia-dropin-v3", ("2.1",)), ("cri-dropin", ("1.6", "2.1")),
    ("symlink", ("1.6", "2.1")), ("dotted", ("1.6", "2.1")), ("crlf", ("1.6", "2.1")), ("crun", ("1.6", "2.1")),
    ("k3s-template", ("1.6", "2.1")), ("k3s-template-v3", ("2.1",)), ("rke2-template", ("2.1",)),
    ("k0s-dropin", ("1.6", "2.1")), ("k0s-dropin-v3", ("2.1",))) for version in versions]


def render(root: str, layout: Layout) -> None:
    """What the distribution does when it starts: k3s / RKE2 render config.toml from the template
    they find (containerd 2.x ones: config-v3.toml.tmpl, else config.toml.tmpl; 1.x ones:
    config.toml.tmpl), or from their base; k0s merges containerd.d's CRI parts into what it imports."""
    fixture = os.path.join(FIXTURES, layout.fixture)
    if layout.runtime in ("k3s", "rke2"):
        base = open(os.path.join(fixture, "base.toml")).read()
        directory = os.path.join(root, os.path.dirname(layout.config))
        names = ("config-v3.toml.tmpl", "config.toml.tmpl") if "version = 3" in base else ("config.toml.tmpl",)
        template = next((open(os.path.join(directory, n)).read() for n in names
                         if os.path.exists(os.path.join(directory, n))), BASE)
        os.makedirs(directory, exist_ok=True)
        with open(os.path.join(root, layout.config), "w") as f:   # a template comment renders as nothing
            f.write(re.sub(r"\{\{/\*.*?\*/\}\}", "", template, flags=re.S).replace(BASE, base))
    elif layout.runtime == "k0s":
        generated = tomlkit.parse(open(os.path.join(fixture, "run/k0s/containerd-cri.toml")).read()).unwrap()
        dropins = os.path.join(root, "etc/k0s/containerd.d")
        for name in sorted(os.listdir(dropins)) if os.path.isdir(dropins) else []:
            part = tomlkit.parse(open(os.path.join(dropins, name)).read()).unwrap()
            generated = merged(generated, {"plugins": part.get("plugins", {})})
        with open(os.path.join(root, "run/k0s/containerd-cri.toml"), "w") as f:
            f.write(tomlkit.dumps(generated))


def merged(into: dict[str, Any], patch: dict[str, Any]) -> dict[str, Any]:
    out = dict(into)
    for key, value in patch.items():
        out[key] = merged(out.get(key) or {}, value) if isinstance(value, dict) else value
    return out


def node(tmp_path, layout: Layout) -> str:
    """The layout's files under a root of their own (imports name absolute paths: @ROOT@ is it)."""
    root = str(tmp_path / "node")
    shutil.copytree(os.path.join(FIXTURES, layout.fixture), root, ignore=shutil.ignore_patterns("base.toml"))
    for directory, _, names in os.walk(root):
        for name in names:
            path = os.path.join(directory, name)
            text = open(path).read()
            if "@ROOT@" in text:
                open(path, "w").write(text.replace("@ROOT@", root))
    render(root, layout)
    if layout.prepare:
        layout.prepare(root)
    return root


def tree(root: str) -> dict[str, tuple[str, bytes | str]]:
    """Every file and link under root, exactly: a link by its target, a file by its bytes."""
    out: dict[str, tuple[str, bytes | str]] = {}
    for directory, dirs, names in os.walk(root):
        for name in names + [d for d in dirs if os.path.islink(os.path.join(directory, d))]:
            path = os.path.join(directory, name)
            rel = os.path.relpath(path, root)
            if os.path.islink(path):
                out[rel] = ("link", os.readlink(path))
            else:
                with open(path, "rb") as f:
                    out[rel] = ("file", f.read())
    return out


# -- what containerd says -------------------------------------------------------------------------


def dumped(containerd: str, config: str) -> dict[str, Any]:
    """containerd's own merged config (from /, as systemd starts it)."""
    out = subprocess.run([containerd, "--config", config, "config", "dump"], capture_output=True, text=True, cwd="/")
    assert out.returncode == 0, out.stderr
    doc: dict[str, Any] = tomlkit.parse(out.stdout).unwrap()
    return doc["plugins"][CRI[doc["version"]]]["containerd"]


def default_runtime(section: dict[str, Any]) -> str:
    default = section["runtimes"][section.get("default_runtime_name") or "runc"]
    return (default.get("options") or {}).get("BinaryName") or "runc"


def rewarm_runtime(path: str) -> str:
    """What rewarm-runc runs: rewarm's config's `runtime`, runc where it names none."""
    return json.load(open(path)).get("runtime", "runc") if os.path.exists(path) else "runc"


def flavor(layout: Layout, root: str, containerd: str) -> containerd_layout.Flavor:
    found = containerd_layout.with_overrides(containerd_layout.FLAVORS[layout.runtime],
                                             os.path.join(root, layout.config), containerd)
    return dataclasses.replace(found, socket=os.path.join(root, "no-daemon.sock"))


def checks(f: containerd_layout.Flavor, runtime: str) -> dict[str, tuple[str, str]]:
    return {what: (status, detail) for status, what, detail in handler_check.checks(f, runtime)}


def cli(verb: str, layout: Layout, root: str, containerd: str, *more: str) -> subprocess.CompletedProcess[str]:
    return rewarm_cli(verb, "--runtime", layout.runtime, "--config", os.path.join(root, layout.config),
                      "--containerd", containerd, *more)


# -- the tests ------------------------------------------------------------------------------------


@pytest.mark.parametrize("name, version", CASES)
def test_containerd_loads_the_handler_chained_to_the_default_and_uninstall_gives_every_byte_back(tmp_path, name,
                                                                                                   version):
    layout, containerd = LAYOUTS[name], CONTAINERDS[version]
    root = node(tmp_path, layout)
    before = tree(root)
    rewarm_config = str(tmp_path / "rewarm.json")
    f = flavor(layout, root, containerd)
    assert checks(f, layout.chained)["containerd handler"][0] == "WARN"          # not there yet

    args = ("--binary", rewarm_runc(), "--rewarm-config", rewarm_config)
    out = cli("install", layout, root, containerd, *args)
    assert out.returncode == 0, out.stdout + out.stderr
    assert f"restart {layout.runtime} to load it: systemctl restart" in out.stdout
    written = {rel for rel, entry in tree(root).items() if before.get(rel) != entry}
    kept = {rel + ".rewarm-backup" for rel in layout.written if rel in before}    # the node's own, for uninstall
    assert written == set(layout.written) | kept, out.stdout           # the one file the layout calls for
    for rel in kept:                                                    # a CRLF file gets CRLF lines only
        ending = b"\r\n" if b"\r\n" in before[rel[:-len(".rewarm-backup")]][1] else b"\n"
        data = open(os.path.join(root, rel[:-len(".rewarm-backup")]), "rb").read()
        assert data.count(b"\n") == data.count(ending), rel
    if layout.runtime in ("k3s", "rke2", "k0s"):                       # rendered / merged only when it restarts
        pending = checks(f, layout.chained)["containerd handler"]
        assert pending[0] == "WARN" and f"systemctl restart {f.units[0]}" in pending[1], pending
    again = cli("install", layout, root, containerd, *args)
    assert again.returncode == 0 and "wrote" not in again.stdout and "already installed" in again.stdout, again.stdout

    render(root, layout)
    if layout.runtime in ("k3s", "rke2", "k0s"):                       # after the restart: still nothing to do
        again = cli("install", layout, root, containerd, *args)
        assert again.returncode == 0 and "wrote" not in again.stdout, again.stdout
    section = dumped(containerd, os.path.join(root, layout.config))
    handler = section["runtimes"]["rewarm"]
    assert handler["options"]["BinaryName"] == rewarm_runc()
    assert handler["runtime_type"] == "io.containerd.runc.v2"
    assert "rewarm.dev/*" in handler["pod_annotations"] and "rewarm.dev/*" in handler["container_annotations"]
    assert {k: handler["options"].get(k) for k in layout.options} == layout.options   # the default handler's options
    assert default_runtime(section) == layout.chained                   # what the node's default handler runs ...
    assert rewarm_runtime(rewarm_config) == layout.chained              # ... is what rewarm-runc runs

    judged = checks(f, rewarm_runtime(rewarm_config))
    status, detail = judged["containerd handler"]
    assert status == "OK" and f"dumped by containerd {version}" in detail, detail
    status, detail = judged["handler chain"]
    assert status == "OK" and f"runs {layout.chained}" in detail, detail
    assert "handler copy" not in judged

    out = cli("uninstall", layout, root, containerd)
    assert out.returncode == 0 and f"restart {layout.runtime} to unload it" in out.stdout, out.stdout + out.stderr
    render(root, layout)
    assert tree(root) == before
    assert "rewarm" not in dumped(containerd, os.path.join(root, layout.config))["runtimes"]


REFUSALS = [
    pytest.param(Layout("inline", "containerd", "config.toml"), "1.6", "inline", id="inline-runtimes-table"),
    pytest.param(Layout("nvidia-v2", "containerd", "config.toml", prepare=renamed_nvidia), "1.6",
                 "would load before", id="cri-dropin-sorting-after-rewarms-on-1.6"),
    pytest.param(Layout("nvidia-v2", "containerd", "config.toml", prepare=by_name), "1.6", "imported by name",
                 id="cri-table-imported-by-name-on-1.6"),
    pytest.param(Layout("nvidia-v2", "containerd", "config.toml", prepare=missing_import), "1.6", "10-gone.toml",
                 id="import-that-does-not-exist-on-1.6"),
    pytest.param(Layout("plain", "containerd", "config.toml", prepare=broken), "2.1", "cannot load",
                 id="config-containerd-cannot-load"),
    pytest.param(Layout("k3s-v3", "k3s", f"{K3S}/config.toml", prepare=never_started), "2.1", "start k3s once",
                 id="k3s-never-started"),
    pytest.param(Layout("symlink", "containerd", "etc/containerd/config.toml", prepare=dangling), "2.1", "dangling",
                 id="config-a-dangling-link"),
]


@pytest.mark.parametrize("layout, version, reason", REFUSALS)
def test_a_layout_rewarm_cannot_edit_safely_is_refused_with_its_reason_and_nothing_written(tmp_path, layout, version,
                                                                                          reason):
    root = node(tmp_path, layout)
    before = tree(root)
    out = cli("install", layout, root, CONTAINERDS[version], "--binary", rewarm_runc(),
              "--rewarm-config", str(tmp_path / "rewarm.json"))
    assert out.returncode != 0 and out.stderr.startswith("rewarm install: ") and reason in out.stderr, out.stderr
    assert "Traceback" not in out.stderr
    assert tree(root) == before and not os.path.exists(tmp_path / "rewarm.json")


def test_on_containerd_1_6_a_handler_that_an_imported_cri_table_replaces_is_no_handler_to_doctor(tmp_path):
    """Where an earlier rewarm put the handler (the config itself, beside NVIDIA's drop-in that owns
    the CRI table), 1.6 never sees it: doctor judges what containerd loads, not the file's text."""
    layout = LAYOUTS["nvidia-dropin"]
    root = node(tmp_path, layout)
    config = os.path.join(root, "config.toml")
    with open(config, "a") as f:
        f.write('\n[plugins."io.containerd.grpc.v1.cri".containerd.runtimes.rewarm]\n'
                '  runtime_type = "io.containerd.runc.v2"\n'
                f'  [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.rewarm.options]\n'
                f'    BinaryName = "{rewarm_runc()}"\n')
    assert "rewarm" not in dumped(CONTAINERDS["1.6"], config)["runtimes"]
    judged = checks(flavor(layout, root, CONTAINERDS["1.6"]), NVIDIA_TOOLKIT)
    assert judged["containerd handler"][0] == "WARN" and "no runtime `rewarm`" in judged["containerd handler"][1]
    # and install moves it where 1.6 reads it: the old handler out of the config, a drop-in after NVIDIA's
    out = cli("install", layout, root, CONTAINERDS["1.6"], "--binary", rewarm_runc(),
              "--rewarm-config", str(tmp_path / "rewarm.json"))
    assert out.returncode == 0, out.stderr
    assert "runtimes.rewarm" not in open(config).read()
    assert dumped(CONTAINERDS["1.6"], config)["runtimes"]["rewarm"]["options"]["BinaryName"] == rewarm_runc()


def test_doctor_names_a_chain_that_is_not_the_default_handlers_runtime_and_parses_without_a_binary(tmp_path):
    layout = LAYOUTS["nvidia-dropin-v3"]
    root = node(tmp_path, layout)
    assert cli("install", layout, root, CONTAINERDS["2.1"], "--binary", rewarm_runc(),
               "--rewarm-config", str(tmp_path / "rewarm.json")).returncode == 0
    f = flavor(layout, root, CONTAINERDS["2.1"])
    chain = checks(f, "runc")["handler chain"]                  # rewarm-runc would run runc, not NVIDIA's runtime
    assert chain[0] == "FAIL" and "'nvidia' runs /usr/bin/nvidia-container-runtime" in chain[1]
    parsed = checks(dataclasses.replace(f, binaries=(str(tmp_path / "no-containerd"),)), layout.chained)
    assert parsed["containerd handler"][0] == "OK" and "no containerd binary found" in parsed["containerd handler"][1]


def test_doctor_warns_when_the_file_a_1_6_dropin_copies_has_changed(tmp_path):
    layout = LAYOUTS["nvidia-dropin"]
    root = node(tmp_path, layout)
    assert cli("install", layout, root, CONTAINERDS["1.6"], "--binary", rewarm_runc(),
               "--rewarm-config", str(tmp_path / "rewarm.json")).returncode == 0
    f = flavor(layout, root, CONTAINERDS["1.6"])
    assert "handler copy" not in checks(f, NVIDIA_TOOLKIT)
    nvidia = os.path.join(root, "conf.d", "99-nvidia.toml")
    text = open(nvidia).read().replace('sandbox_image = "registry.k8s.io/pause:3.9"',
                                       'sandbox_image = "registry.k8s.io/pause:3.10"')
    open(nvidia, "w").write(text)
    copy = checks(f, NVIDIA_TOOLKIT)["handler copy"]
    assert copy[0] == "WARN" and "99-nvidia.toml changed" in copy[1]
    assert cli("install", layout, root, CONTAINERDS["1.6"], "--binary", rewarm_runc(),
               "--rewarm-config", str(tmp_path / "rewarm.json")).returncode == 0     # the copy taken again
    assert "handler copy" not in checks(f, NVIDIA_TOOLKIT)


def test_an_nvidia_dropin_added_after_install_gets_the_handler_moved_and_uninstall_gives_all_back(tmp_path):
    """rewarm installed on a plain config (in place); later NVIDIA's toolkit adds its conf.d drop-in
    that owns the CRI table under 1.6. Installing again moves the handler into a drop-in after it,
    and uninstall still gives the config its own bytes back."""
    layout = LAYOUTS["nvidia-dropin"]
    root = node(tmp_path, layout)
    nvidia = os.path.join(root, "conf.d", "99-nvidia.toml")
    held = open(nvidia).read()
    os.unlink(nvidia)
    before = tree(root)
    args = ("--binary", rewarm_runc(), "--rewarm-config", str(tmp_path / "rewarm.json"))
    assert cli("install", layout, root, CONTAINERDS["1.6"], *args).returncode == 0
    assert "rewarm: begin" in open(os.path.join(root, "config.toml")).read()
    open(nvidia, "w").write(held)
    assert cli("install", layout, root, CONTAINERDS["1.6"], *args).returncode == 0
    assert "rewarm: begin" not in open(os.path.join(root, "config.toml")).read()
    section = dumped(CONTAINERDS["1.6"], os.path.join(root, "config.toml"))
    assert "rewarm" in section["runtimes"] and default_runtime(section) == NVIDIA_TOOLKIT
    assert cli("uninstall", layout, root, CONTAINERDS["1.6"]).returncode == 0
    os.unlink(nvidia)
    assert tree(root) == before


def _socket(path: str) -> socket.socket:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.bind(path)
    return s


@pytest.mark.parametrize("paths, found", [
    (["run/k3s/containerd/containerd.sock", f"{K3S}/"], "k3s"),
    (["run/k3s/containerd/containerd.sock", f"{RKE2}/"], "rke2"),
    (["run/k0s/containerd.sock", "etc/k0s/containerd.toml"], "k0s"),
    (["run/containerd/containerd.sock"], "containerd"),
    (["run/containerd/containerd.sock", "run/k3s/containerd/containerd.sock", f"{K3S}/"], "k3s"),   # Docker's too
    (["etc/containerd/config.toml"], "containerd"),                                              # not running now
    ([], None),
])
def test_auto_detection_finds_the_distributions_containerd_by_its_socket_and_paths(tmp_path, paths, found):
    sockets = []
    for rel in paths:
        path = os.path.join(tmp_path, rel)
        if rel.endswith(".sock"):
            sockets.append(_socket(path))
        elif rel.endswith("/"):
            os.makedirs(path)
        else:
            os.makedirs(os.path.dirname(path), exist_ok=True)
            open(path, "w").close()
    try:
        detected = containerd_layout.detect(str(tmp_path))
        assert (detected.name if detected else None) == found
    finally:
        for s in sockets:
            s.close()


def test_the_restart_command_names_the_unit_the_node_has(tmp_path):
    os.makedirs(tmp_path / "etc/systemd/system")
    (tmp_path / "etc/systemd/system/k3s-agent.service").write_text("")
    assert containerd_layout.restart_command(containerd_layout.FLAVORS["k3s"], str(tmp_path)) == \
        "systemctl restart k3s-agent"
    assert containerd_layout.restart_command(containerd_layout.FLAVORS["rke2"], str(tmp_path)) == \
        "systemctl restart rke2-server || systemctl restart rke2-agent"


def test_a_version_3_config_is_not_judged_by_a_1_x_containerd_which_would_ignore_it(tmp_path):
    """A 1.x containerd loads a version 3 config without a word and ignores its CRI section: it is not
    that config's reader. install says so, writes by 2.x's rules, and 2.x loads the handler."""
    layout = LAYOUTS["nvidia-dropin-v3"]
    root = node(tmp_path, layout)
    out = cli("install", layout, root, CONTAINERDS["1.6"], "--binary", rewarm_runc(),
              "--rewarm-config", str(tmp_path / "rewarm.json"))
    assert out.returncode == 0 and "is 1.x, which ignores a version 3 config" in out.stdout, out.stdout + out.stderr
    section = dumped(CONTAINERDS["2.1"], os.path.join(root, layout.config))
    assert section["runtimes"]["rewarm"]["options"]["BinaryName"] == rewarm_runc()
    assert default_runtime(section) == rewarm_runtime(str(tmp_path / "rewarm.json")) == layout.chained


def test_doctor_asks_for_the_restart_until_the_running_containerd_has_loaded_the_handler(tmp_path):
    """The dump says what containerd will run with; the daemon's CRI status says what it runs with."""
    lab = Lab("doctor")
    lab.destroy()
    lab.write_config(rewarm_runc(), with_rewarm=False)
    try:
        lab.start()
        f = dataclasses.replace(containerd_layout.with_overrides(containerd_layout.FLAVORS["containerd"], lab.config,
                                                                 CONTAINERDS["1.6"]), socket=lab.address)
        assert rewarm_cli("install", "--runtime", "containerd", "--config", lab.config, "--binary", rewarm_runc(),
                          "--containerd", CONTAINERDS["1.6"]).returncode == 0
        judged = checks(f, "runc")
        assert judged["containerd handler"][0] == "OK"
        live = judged["containerd handler live"]
        assert live[0] == "WARN" and "has not loaded it yet: systemctl restart containerd" in live[1], live
        lab.restart()
        assert checks(f, "runc")["containerd handler live"][0] == "OK"
    finally:
        lab.destroy()


@pytest.mark.parametrize("named, kept", [
    ("/opt/rewarm/bin/runc", "/opt/rewarm/bin/runc"),   # the bundle's own runc: a runc, as the default handler runs
    (NVIDIA_TOOLKIT, "runc"),                           # left from when NVIDIA's handler was the default
])
def test_rewarm_runs_a_runc_where_the_default_handler_names_no_binary(tmp_path, named, kept):
    layout = LAYOUTS["crlf"]
    root = node(tmp_path, layout)
    rewarm_config = tmp_path / "rewarm.json"
    rewarm_config.write_text(json.dumps({"runtime": named, "criu": "/opt/rewarm/bin/criu"}))
    out = cli("install", layout, root, CONTAINERDS["1.6"], "--binary", rewarm_runc(),
              "--rewarm-config", str(rewarm_config))
    assert out.returncode == 0, out.stderr
    assert json.loads(rewarm_config.read_text()) == {"runtime": kept, "criu": "/opt/rewarm/bin/criu"}
    judged = checks(flavor(layout, root, CONTAINERDS["1.6"]), kept)
    assert judged["handler chain"][0] == "OK" and "'runc' runs runc" in judged["handler chain"][1]


@pytest.mark.parametrize("config, engine", [
    (f"{K3S}/config.toml", "k3s"), (f"{RKE2}/config.toml", "rke2"), ("etc/k0s/containerd.toml", "k0s"),
    ("etc/containerd/config.toml", "containerd"), ("srv/elsewhere.toml", "containerd"),
    ("etc/crio/crio.conf.d/50-rewarm.conf", "crio"),
])
def test_with_a_config_named_auto_takes_the_runtime_its_path_belongs_to(tmp_path, config, engine):
    assert install.engine_of("auto", os.path.join(tmp_path, config)) == engine
