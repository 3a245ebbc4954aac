"""`rewarm install` edits engine configs: exact, idempotent, comment-preserving, refuses what it cannot do.
(That containerd loads the result and lists the handler is in test_cri.py; the layouts nodes really
have, judged by `containerd config dump`, in test_install_configs.py.)"""
from __future__ import annotations

import difflib
import json
import os
import subprocess

import pytest
import tomlkit

from helpers import rewarm_cli
from runtime.lab import containerd_lab
from runtime.node import install

DEFAULT = subprocess.run(["containerd", "config", "default"], capture_output=True, text=True, check=True).stdout
CONTAINERD_2 = os.path.join(containerd_lab.CONTAINERD_2_BIN, "containerd")


def cri_runtimes(text: str, plugin: str = "io.containerd.grpc.v1.cri") -> dict:
    return tomlkit.parse(text).unwrap()["plugins"][plugin]["containerd"]["runtimes"]


def test_handler_copies_runc_options_and_keeps_comments_and_layout():
    text = "# node config, kept by hand\n" + DEFAULT.replace("SystemdCgroup = false", "SystemdCgroup = true")
    new = install.containerd_config(text, "/usr/local/bin/rewarm-runc")
    rewarm = cri_runtimes(new)["rewarm"]
    assert rewarm["options"]["BinaryName"] == "/usr/local/bin/rewarm-runc"
    assert rewarm["options"]["SystemdCgroup"] is True          # like runc: both handlers run containers alike
    assert rewarm["pod_annotations"] == ["rewarm.dev/*"] and rewarm["container_annotations"] == ["rewarm.dev/*"]
    assert new.startswith("# node config, kept by hand\n")
    changes = difflib.SequenceMatcher(None, text.splitlines(), new.splitlines(), autojunk=False).get_opcodes()
    assert {op for op, *_ in changes} == {"equal", "insert"}        # lines were added, none changed or lost
    assert install.containerd_config(new, "/usr/local/bin/rewarm-runc") == new       # idempotent


def test_a_changed_binary_replaces_the_handler():
    first = install.containerd_config(DEFAULT, "/a/rewarm-runc")
    second = install.containerd_config(first, "/b/rewarm-runc")
    assert cri_runtimes(second)["rewarm"]["options"]["BinaryName"] == "/b/rewarm-runc"
    assert second.count("runtimes.rewarm]") == 1


def test_new_file_in_containerd_2_form_defines_runc_too():
    new = install.containerd_config("", "/x/rewarm-runc", version=3)
    doc = tomlkit.parse(new).unwrap()
    assert doc["version"] == 3
    runtimes = cri_runtimes(new, "io.containerd.cri.v1.runtime")
    assert runtimes["runc"]["runtime_type"] == "io.containerd.runc.v2"   # CRI needs its default runtime
    assert runtimes["rewarm"]["options"]["BinaryName"] == "/x/rewarm-runc"


def test_version_1_config_is_refused_with_a_clear_message():
    with pytest.raises(install.InstallError, match="version 1"):
        install.containerd_config('[plugins.cri]\n  sandbox_image = "x"\n', "/x")


def test_dry_run_writes_nothing_and_a_real_run_keeps_a_backup(tmp_path):
    path = tmp_path / "config.toml"
    path.write_text(DEFAULT)
    dry = rewarm_cli("install", "--runtime", "containerd", "--config", str(path), "--binary", "/x/rewarm-runc", "--dry-run")
    assert dry.returncode == 0 and "+" in dry.stdout and path.read_text() == DEFAULT
    assert not os.path.exists(str(path) + install.BACKUP_SUFFIX)
    real = rewarm_cli("install", "--runtime", "containerd", "--config", str(path), "--binary", "/x/rewarm-runc")
    assert real.returncode == 0
    assert open(str(path) + install.BACKUP_SUFFIX).read() == DEFAULT
    assert "rewarm" in cri_runtimes(path.read_text())


def test_crio_dropin_allows_exactly_rewarms_annotations_and_hooks_d_runs_rewarm_hook(tmp_path):
    path = tmp_path / "crio.conf.d" / "50-rewarm.conf"
    hooks = tmp_path / "hooks.d"
    for _ in range(2):
        out = rewarm_cli("install", "--runtime", "crio", "--config", str(path), "--binary", "/x/rewarm-runc",
                       "--hooks-dir", str(hooks), "--rewarm-config", "/etc/rewarm/node.json")
        assert out.returncode == 0, out.stderr
    assert out.stdout.count("already installed") == 3       # the drop-in and two hooks: unchanged
    for stage in ("prestart", "poststop"):
        hook = json.loads((hooks / f"rewarm-{stage}.json").read_text())
        assert hook["version"] == "1.0.0" and hook["stages"] == [stage]
        assert hook["hook"]["path"] == "/x/rewarm-hook" and hook["hook"]["args"] == ["rewarm-hook", stage]
        assert "REWARM_CONFIG=/etc/rewarm/node.json" in hook["hook"]["env"]
        assert hook["when"]["annotations"] == {"^rewarm\\.dev/snapshot$": ".+"}
    runtime = tomlkit.parse(path.read_text()).unwrap()["crio"]["runtime"]["runtimes"]["rewarm"]
    assert runtime["runtime_path"] == "/x/rewarm-runc"
    assert set(runtime["allowed_annotations"]) == {"rewarm.dev/snapshot", "rewarm.dev/capture", "rewarm.dev/ready-file",
                                                   "rewarm.dev/ready-http", "rewarm.dev/fallback",
                                                   "rewarm.dev/quiesce-http", "rewarm.dev/resume-http",
                                                   "rewarm.dev/snapshot-ref", "rewarm.dev/push",
                                                   "rewarm.dev/engine", "rewarm.dev/sleep-level", "rewarm.dev/container"}


def test_broken_toml_is_reported_not_overwritten(tmp_path):
    path = tmp_path / "config.toml"
    path.write_text("version = 2\n[plugins\n")
    out = rewarm_cli("install", "--runtime", "containerd", "--config", str(path), "--binary", "/x/rewarm-runc")
    assert out.returncode != 0 and "rewarm install" in out.stderr
    assert path.read_text() == "version = 2\n[plugins\n"


def test_uninstall_puts_the_nodes_own_config_back_byte_for_byte_even_after_an_upgrade(tmp_path):
    """Install, install again with a new binary (an upgrade), uninstall: containerd's default config
    comes back as it was, and the kept copy goes. Each containerd's own default, 1.6's and 2.x's."""
    for name, binary in (("1.6", "containerd"), ("2.x", CONTAINERD_2)):
        original = subprocess.run([binary, "config", "default"], capture_output=True, text=True, check=True).stdout
        path = tmp_path / f"{name}.toml"
        path.write_text(original)
        which = ("--runtime", "containerd", "--config", str(path), "--containerd", binary)
        for rewarm_runc in ("/x/1.0/rewarm-runc", "/x/1.1/rewarm-runc"):
            assert rewarm_cli("install", *which, "--binary", rewarm_runc).returncode == 0
        assert "rewarm" in path.read_text()
        out = rewarm_cli("uninstall", *which)
        assert out.returncode == 0 and "restart containerd" in out.stdout, out.stderr
        assert path.read_bytes() == original.encode(), name
        assert not os.path.exists(str(path) + install.BACKUP_SUFFIX)
        again = rewarm_cli("uninstall", *which)
        assert again.returncode == 0 and "nothing of rewarm's there" in again.stdout


def test_uninstall_of_a_config_edited_since_removes_only_the_handler_and_of_one_install_made_removes_it(tmp_path):
    path = tmp_path / "config.toml"
    path.write_text(DEFAULT)
    rewarm_cli("install", "--runtime", "containerd", "--config", str(path), "--binary", "/x/rewarm-runc")
    edited = path.read_text() + "\n# the operator's own note\n"
    path.write_text(edited)
    assert rewarm_cli("uninstall", "--runtime", "containerd", "--config", str(path)).returncode == 0
    left = path.read_text()
    assert "the operator's own note" in left and "rewarm" not in cri_runtimes(left) and "runc" in cri_runtimes(left)
    made = tmp_path / "new" / "config.toml"
    made.parent.mkdir()
    rewarm_cli("install", "--runtime", "containerd", "--config", str(made), "--binary", "/x/rewarm-runc")
    assert made.exists()
    rewarm_cli("uninstall", "--runtime", "containerd", "--config", str(made))
    assert not made.exists()


def test_uninstall_for_crio_removes_the_dropin_and_the_hooks(tmp_path):
    dropin, hooks = tmp_path / "crio.conf.d" / "50-rewarm.conf", tmp_path / "hooks.d"
    rewarm_cli("install", "--runtime", "crio", "--config", str(dropin), "--binary", "/x/rewarm-runc",
               "--hooks-dir", str(hooks))
    assert dropin.exists() and len(os.listdir(hooks)) == 2
    out = rewarm_cli("uninstall", "--runtime", "crio", "--config", str(dropin), "--hooks-dir", str(hooks))
    assert out.returncode == 0 and not dropin.exists() and os.listdir(hooks) == [], out.stdout


NVIDIA_V2 = DEFAULT.replace('default_runtime_name = "runc"', 'default_runtime_name = "nvidia"') + '''
[plugins."io.containerd.grpc.v1.cri".containerd.runtimes.nvidia]
  runtime_type = "io.containerd.runc.v2"
  [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.nvidia.options]
    BinaryName = "/usr/local/nvidia/toolkit/nvidia-container-runtime"
    SystemdCgroup = true
'''
NVIDIA_V3 = '''version = 3
[plugins."io.containerd.cri.v1.runtime".containerd]
  default_runtime_name = "nvidia"
  [plugins."io.containerd.cri.v1.runtime".containerd.runtimes.runc]
    runtime_type = "io.containerd.runc.v2"
  [plugins."io.containerd.cri.v1.runtime".containerd.runtimes.nvidia]
    runtime_type = "io.containerd.runc.v2"
    [plugins."io.containerd.cri.v1.runtime".containerd.runtimes.nvidia.options]
      BinaryName = "/usr/bin/nvidia-container-runtime"
'''
CDI = DEFAULT.replace("    enable_selinux = false", "    enable_cdi = true\n    enable_selinux = false")


@pytest.mark.parametrize("layout, plugin, binary", [
    (NVIDIA_V2, "io.containerd.grpc.v1.cri", "/usr/local/nvidia/toolkit/nvidia-container-runtime"),   # GPU Operator
    (NVIDIA_V3, "io.containerd.cri.v1.runtime", "/usr/bin/nvidia-container-runtime"),   # toolkit, containerd 2.x
])
def test_under_nvidias_default_handler_rewarm_runc_chains_to_nvidia_container_runtime(tmp_path, layout, plugin, binary):
    """The GPU Operator (or `nvidia-ctk runtime configure --set-as-default`) makes `nvidia` the
    default handler: rewarm's copies its options, and rewarm-runc execs its binary, so GPUs reach
    the pod as they would without rewarm."""
    path, rewarm_config = tmp_path / "config.toml", tmp_path / "rewarm.json"
    path.write_text(layout)
    rewarm_config.write_text(json.dumps({"allowed_registries": ["reg.example.com"]}))
    containerd = CONTAINERD_2 if layout is NVIDIA_V3 else "containerd"
    out = rewarm_cli("install", "--runtime", "containerd", "--config", str(path), "--binary", "/x/rewarm-runc",
                     "--rewarm-config", str(rewarm_config), "--containerd", containerd)
    assert out.returncode == 0, out.stderr
    handler = cri_runtimes(path.read_text(), plugin)["rewarm"]
    assert handler["options"]["BinaryName"] == "/x/rewarm-runc"
    assert handler["options"].get("SystemdCgroup") == (True if layout is NVIDIA_V2 else None)   # nvidia's options
    assert json.loads(rewarm_config.read_text()) == {"allowed_registries": ["reg.example.com"], "runtime": binary}
    again = rewarm_cli("install", "--runtime", "containerd", "--config", str(path), "--binary", "/x/rewarm-runc",
                       "--rewarm-config", str(rewarm_config), "--containerd", containerd)
    assert again.stdout.count("already installed") == 2                  # idempotent, both files


def test_with_cdi_on_runc_there_is_nothing_to_chain(tmp_path):
    """CDI: containerd's CRI writes the GPU devices into the spec; rewarm-runc hands runc the spec
    unchanged, so the handler copies runc's options and the real runtime stays runc."""
    path, rewarm_config = tmp_path / "config.toml", tmp_path / "rewarm.json"
    path.write_text(CDI)
    out = rewarm_cli("install", "--runtime", "containerd", "--config", str(path), "--binary", "/x/rewarm-runc",
                     "--rewarm-config", str(rewarm_config))
    assert out.returncode == 0 and not rewarm_config.exists()       # rewarm-runc runs its default: runc
    assert "enable_cdi = true" in path.read_text()
    assert cri_runtimes(path.read_text())["rewarm"]["options"]["BinaryName"] == "/x/rewarm-runc"


def test_install_makes_a_store_others_could_read_root_only_and_doctor_then_passes_it(tmp_path):
    """A store directory someone made readable by others (an admin's mkdir, an old tool) is rewarm's:
    install makes it root-only and says so, before doctor judges it."""
    from helpers import config_named
    from runtime.lab.private_node import write_config
    store = tmp_path / "store"
    store.mkdir(mode=0o755)
    os.chmod(store, 0o755)
    with config_named(write_config(str(tmp_path), store=str(store))):
        out = rewarm_cli("install", "--runtime", "containerd", "--config", str(tmp_path / "config.toml"),
                         "--binary", "/x/rewarm-runc")
        assert out.returncode == 0, out.stderr
        assert f"store {store} was mode 0o755" in out.stdout and "repaired to 0700" in out.stdout
        assert os.stat(store).st_mode & 0o777 == 0o700
        doctor = rewarm_cli("doctor", "--json")
    (check,) = [c for c in json.loads(doctor.stdout) if c["check"] == "store"]
    assert check["status"] == "OK", check
