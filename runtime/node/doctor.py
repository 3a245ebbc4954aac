"""`rewarm doctor`: what on this node decides whether capture and restore can work."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
from typing import Callable

from runtime.host import settings_file
from runtime.host.node_facts import tool_version
from runtime.front.names import config_path
from runtime.model import layout
from runtime.model.resources import config_json
from runtime.model.settings import Settings

CRIU_MIN = (4, 2)
Check = tuple[str, str, str]  # (status OK/WARN/FAIL, what, detail)


def _criu(cfg: Settings) -> list[Check]:
    path = shutil.which(cfg.criu)
    if not path:
        return [("FAIL", "criu", f"{cfg.criu} not found (run packaging/install-node.sh)")]
    version = tool_version([path, "--version"]).split()[-1]
    parts = tuple(int(p) for p in version.split(".")[:2] if p.isdigit())
    out = [("OK" if parts >= CRIU_MIN else "FAIL", "criu version", f"{version} at {path} (need >= 4.2 on new kernels)")]
    check = subprocess.run([path, "check"], capture_output=True, text=True)
    out.append(("OK" if check.returncode == 0 else "FAIL", "criu check", (check.stdout + check.stderr).strip()[-200:]))
    from runtime.container import criu
    if criu.has_parallel_fill(path):
        out.append(("OK", "criu parallel fill", f"yes: {cfg.restore_threads} reader(s) fill restored memory"
                    + (", huge pages while filling" if cfg.restore_huge_pages else "")))
    else:
        out.append(("WARN", "criu parallel fill", "no: this CRIU fills memory in one thread (packaging/install-node.sh "
                                                   "builds rewarm's, with restore_threads readers)"))
    plugin = os.path.join(cfg.criu_plugin_dir, "cuda_plugin.so")
    out.append(("OK" if os.path.exists(plugin) else "WARN", "CRIU CUDA plugin",
                plugin if os.path.exists(plugin) else f"{plugin} missing: GPU memory cannot be captured"))
    return out


def _runtime(cfg: Settings) -> list[Check]:
    path = shutil.which(cfg.runtime)
    return [("OK", "runtime", f"{tool_version([path, '--version'])} at {path}") if path else
            ("FAIL", "runtime", f"{cfg.runtime} not found")]


def _config(cfg: Settings) -> list[Check]:
    path = config_path()
    if not os.path.exists(path):
        return [("OK", "config", f"{path} absent: defaults in use")]
    import jsonschema
    try:
        jsonschema.validate(settings_file.read_raw(path), config_json("rewarm-config.schema.json"))
    except (jsonschema.ValidationError, ValueError) as e:
        return [("FAIL", "config", f"{path}: {getattr(e, 'message', e)}")]
    return [("OK", "config", path)]


def _store(cfg: Settings) -> list[Check]:
    if os.path.lexists(cfg.store) and not os.path.isdir(cfg.store):
        return [("FAIL", "store", f"{cfg.store} is there but not a directory")]
    if not os.path.isdir(cfg.store):
        return [("OK", "store", f"{cfg.store} (created on first capture)")]
    mode = os.stat(cfg.store).st_mode & 0o777
    return [("OK" if mode == 0o700 else "FAIL", "store", f"{cfg.store} mode {oct(mode)} (must be 0700: snapshots hold secrets)")]


def _node(cfg: Settings) -> list[Check]:
    out: list[Check] = []
    out.append(("OK" if shutil.which("iptables-restore") or any("network-lock" in o for o in cfg.criu_options)
                else "WARN", "network lock", "iptables-restore found" if shutil.which("iptables-restore")
                else "no iptables-restore: add \"network-lock skip\" to criu_options"))
    try:
        thp = open("/sys/kernel/mm/transparent_hugepage/enabled").read().strip()
        never = "[never]" in thp   # madvise is enough: rewarm's CRIU asks for huge pages where it fills
        out.append(("WARN" if never else "OK", "transparent huge pages",
                    f"{thp}" + (": restores fill memory in 4 KiB pages, slower for GPU-sized snapshots "
                                "(madvise or always lets rewarm's CRIU use huge pages)" if never else "")))
    except OSError:
        pass
    probe = cfg.store if os.path.isdir(cfg.store) else os.path.dirname(cfg.store.rstrip("/")) or "/"
    try:
        free = shutil.disk_usage(probe).free
        out.append(("OK" if free > 64 << 30 else "WARN", "store disk space",
                    f"{free / 2**30:.0f} GiB free under {probe} (a GPU worker's snapshot is its GPU memory plus its host memory)"))
    except OSError:
        pass
    return out


def _snapshots(cfg: Settings) -> list[Check]:
    """How much of each snapshot is in the page cache: a warm one restores at memory speed."""
    from runtime.snapshot import store
    from runtime.engine import warm
    out: list[Check] = []
    for e in store.Store(cfg.store).all_entries() if os.path.isdir(cfg.store) else []:
        size, resident = warm.size(e), warm.resident(e)
        reread = size - e.size()
        out.append(("OK", f"snapshot {e.namespace}/{e.name}",
                    f"{e.size() / 1e9:.2f} GB" + (f" + {reread / 1e9:.2f} GB its worker reads back" if reread else "")
                    + f", {100 * resident / max(size, 1):.0f}% in the page cache"
                    + ("" if resident >= size else " (`rewarm warm` reads it in)")))
        advice = _advice_of(e.file(layout.SPEC_DUMP))
        if advice:
            out.append(("WARN", f"snapshot {e.namespace}/{e.name} speed", advice))
    return out


def _advice_of(spec_dump: str) -> str:
    """What the snapshot's engine preset says would restore it faster (read off its captured spec)."""
    from runtime.host.files import read_json
    from runtime.model import annotations as ann, oci_spec
    from runtime.model.errors import InvalidInput
    try:
        spec = oci_spec.parsed(read_json(spec_dump))
        return ann.worker_hooks(oci_spec.annotations_of(spec), oci_spec.process(spec)).advice
    except (OSError, ValueError, InvalidInput):
        return ""


def _handler(cfg: Settings) -> list[Check]:
    """Is rewarm a runtime handler of the node's containerd (plain, k3s, RKE2, k0s) in the config
    containerd really loads, pointing at a rewarm-runc with its engine, chained to the runtime of the
    default handler? (handler_check: judged on `containerd config dump`.)"""
    from runtime.node import handler_check
    return handler_check.node_checks(cfg.runtime)


def _gpu(cfg: Settings) -> list[Check]:
    try:
        from runtime.gpu import nvml
        return nvml.doctor_checks()
    except ImportError as e:
        return [("WARN", "GPU", f"GPU support not available: {e}")]


KUBELET_CONFIG = "/var/lib/kubelet/config.yaml"
KUBELET_DEFAULT_S = 120       # kubelet's --runtime-request-timeout default (2m)
COLD_START_RESERVE_S = 15     # what a cold start after a restore given up needs inside kubelet's time


def kubelet_timeout_s(path: str = KUBELET_CONFIG) -> int:
    """kubelet's runtimeRequestTimeout from its config file (e.g. `2m0s`), else its default."""
    import re
    try:
        with open(path, encoding="utf-8") as f:
            found = re.search(r"^runtimeRequestTimeout:\s*\"?((?:\d+h)?(?:\d+m)?(?:\d+(?:\.\d+)?s)?)\"?\s*$",
                              f.read(), re.M)
    except OSError:
        return KUBELET_DEFAULT_S
    if not found or not found.group(1):
        return KUBELET_DEFAULT_S
    units = {"h": 3600, "m": 60, "s": 1}
    return int(sum(float(n) * units[u] for n, u in re.findall(r"([\d.]+)([hms])", found.group(1))))


def _budgets(cfg: Settings) -> list[Check]:
    """A restore (with its pull on a miss) gives up at create_timeout_s and cold-starts: that must
    end inside kubelet's runtime-request-timeout, or kubelet abandons the create."""
    kubelet = kubelet_timeout_s()
    out: list[Check] = []
    fits = cfg.create_timeout_s + COLD_START_RESERVE_S <= kubelet
    out.append(("OK" if fits else "WARN", "create budget",
                f"create_timeout_s {cfg.create_timeout_s}s + {COLD_START_RESERVE_S}s for a cold start "
                + ("fits" if fits else "does not fit") + f" kubelet's runtimeRequestTimeout ({kubelet}s)"))
    if cfg.pull_timeout_s >= cfg.create_timeout_s:
        out.append(("WARN", "pull budget", f"pull_timeout_s {cfg.pull_timeout_s}s leaves no time of create_timeout_s "
                                           f"({cfg.create_timeout_s}s) for the restore after a pull"))
    return out


CHECKS: list[Callable[[Settings], list[Check]]] = [_config, _runtime, _criu, _store, _snapshots, _node, _handler,
                                                   _budgets, _gpu]


def run(cfg: Settings, as_json: bool = False) -> int:
    results = [c for check in CHECKS for c in check(cfg)]
    if as_json:
        print(json.dumps([{"status": s, "check": w, "detail": d} for s, w, d in results], indent=2))
    else:
        for status, what, detail in results:
            print(f"{status:<5} {what:<24} {detail}")
    return 1 if any(s == "FAIL" for s, _, _ in results) else 0
