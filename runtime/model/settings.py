"""rewarm's node configuration: one JSON object (`/etc/rewarm/config.json` or $REWARM_CONFIG).

Every key is optional; unknown keys and values of the wrong type are refused with the key's name.
`config/rewarm-config.schema.json` documents the same keys (`rewarm doctor` validates against it).
"""
from __future__ import annotations

from dataclasses import dataclass, field, fields
from enum import Enum
from typing import Any, Mapping

from runtime.model.errors import SettingsError


class Verify(Enum):
    SHA256 = "sha256"    # checksum every snapshot file before restore (cached while the files are unchanged)
    SIZE = "size"        # sizes only


def _default_restore_threads() -> int:
    import os
    return min(16, os.cpu_count() or 1)


WARM_AFTER = ("capture", "import", "pull")   # the events after which warm_after may read an entry in
EVENT_LOG_MIN_BYTES = 4096   # an event log bound below a few records would rotate at almost every line


def _default_env_ignore() -> tuple[str, ...]:
    return ("HOSTNAME", "KUBERNETES_*", "*_SERVICE_HOST", "*_SERVICE_PORT", "*_SERVICE_PORT_*", "*_PORT", "*_PORT_*")


@dataclass(frozen=True)
class Settings:
    runtime: str = "runc"                       # real OCI runtime: a name on PATH or a path (runc, crun)
    store: str = "/var/lib/rewarm"              # snapshot store root (created 0700)
    criu: str = "criu"                          # CRIU binary given to the runtime (--criu)
    criu_plugin_dir: str = "/opt/rewarm/criu-plugins"   # CRIU plugins (cuda_plugin.so); "" = none
    criu_options: tuple[str, ...] = ()          # extra CRIU config-file lines
    env_ignore: tuple[str, ...] = field(default_factory=_default_env_ignore)  # env names (globs) not fingerprinted
    fingerprint_key_file: str = "/etc/rewarm/fingerprint.key"  # keys env hashes; made on first use; shared by nodes that share snapshots
    shared_namespaces: tuple[str, ...] = ()     # namespaces whose snapshots any namespace may restore
    event_log: str = "/var/log/rewarm/events.jsonl"  # one JSON line per restore / cold start / capture
    event_log_max_bytes: int = 8 << 20          # the log moves to EVENT_LOG.1 (replacing it) at this size
    pod_log_notice: bool = True                 # one line on the container's stderr saying what rewarm did
    verify: Verify = Verify.SHA256
    capture_timeout_s: int = 600                # longest a capture may take
    restore_timeout_s: int = 300                # longest a restore may take before it counts as failed
    create_timeout_s: int = 100                 # a create's pull on miss, restore and resume hook together, then a
                                                # cold start: within kubelet's runtime-request-timeout (2 minutes)
    cuda_checkpoint: str = ""                   # "" = rewarm's own cuda-checkpoint; or a path to NVIDIA's
    cuda_lock_timeout_ms: int = 10000           # how long capture waits for in-flight GPU work
    hook_timeout_s: int = 60                    # longest a worker's quiesce / resume hook may take
    ready_timeout_s: int = 3600                 # an on-ready watcher gives up on a container not ready by then
    block_io_uring: bool = True                 # annotated containers start with io_uring refused (CRIU cannot capture it)
    inject_hooks: bool = True                   # rewarm-runc adds rewarm-hook prestart/poststop to annotated containers
    metrics_file: str = "/var/lib/node_exporter/textfile_collector/rewarm.prom"  # Prometheus text file ("" = none)
    prefetch_threads: int = 0                   # readers that pull page images into the page cache ahead of CRIU
    read_ahead: bool = True                     # a reader pulls the files a worker reads back into the page cache
                                                # from CRIU's start (false: the worker reads them itself)
    import_max_ratio: int = 100                 # an imported archive may unpack to this many times its size
    restore_threads: int = field(default_factory=_default_restore_threads)  # CRIU's readers filling memory (1: stock)
    restore_huge_pages: bool = True             # CRIU faults huge pages while it fills (NOHUGEPAGE is kept)
    warm_after: tuple[str, ...] = ()            # read a new entry into the page cache after these (WARM_AFTER)
    # Registries (push, pull, rewarm.dev/snapshot-ref)
    pull_timeout_s: int = 60                    # longest a create waits for a pull on a miss (then cold start)
    pull_stall_s: int = 60                      # a pull that moves under 1 MiB in this long has stalled: it fails
    pull_max_bytes: int = 0                     # largest snapshot a pull takes (0: what the store's disk can hold)
    allowed_registries: tuple[str, ...] = ()    # HOST[:PORT] or HOST[:PORT]/REPO-PREFIX that pods may pull from
    namespace_registries: tuple[str, ...] = ()  # NAMESPACE=HOST[:PORT][/REPO-PREFIX]: narrows it per namespace
    registry_auth_file: str = ""                # "" = $REGISTRY_AUTH_FILE, else docker's config.json
    registry_ca_file: str = ""                  # CA bundle for registries' TLS ("" = the system's)
    plain_http_registries: tuple[str, ...] = () # loopback registries (HOST:PORT) spoken to without TLS
    registry_redirect_hosts: tuple[str, ...] = ()  # HOST[:PORT] or *.DOMAIN a registry may redirect to (its CDN)
    transfer_threads: int = 8                   # parallel blob uploads / downloads
    encrypt_recipients: tuple[str, ...] = ()    # public keys (PEM) every push encrypts to (ocicrypt's JWE layout)
    decryption_keys: tuple[str, ...] = ()       # private keys (PEM) a pull decrypts with
    sign_key_file: str = ""                     # private key (PEM) every push signs with (cosign's layout)
    signature_keys: tuple[str, ...] = ()        # public keys (PEM) whose signatures a pull accepts
    require_signature: bool = False             # a pull without a signature by signature_keys is refused

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for f in fields(self):
            value = getattr(self, f.name)
            out[f.name] = value.value if isinstance(value, Enum) else list(value) if isinstance(value, tuple) else value
        return out


def _coerce(name: str, value: Any, default: Any, source: str) -> Any:
    if isinstance(default, Enum):
        try:
            return type(default)(value)
        except ValueError as e:
            allowed = ", ".join(repr(m.value) for m in type(default))
            raise SettingsError(f"rewarm config {source}: {name} must be one of {allowed}, not {value!r}") from e
    if isinstance(default, tuple):
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise SettingsError(f"rewarm config {source}: {name} must be a list of strings")
        return tuple(value)
    if isinstance(default, bool) or not isinstance(default, int):
        if type(value) is not type(default):
            raise SettingsError(f"rewarm config {source}: {name} must be a {type(default).__name__}, not {value!r}")
        return value
    if type(value) is not int or value < 0:
        raise SettingsError(f"rewarm config {source}: {name} must be a non-negative integer, not {value!r}")
    return value


def from_mapping(raw: Any, source: str = "(given)") -> Settings:
    if not isinstance(raw, Mapping):
        raise SettingsError(f"rewarm config {source} must be a JSON object")
    defaults = Settings()
    known = {f.name for f in fields(Settings)}
    unknown = sorted(set(raw) - known)
    if unknown:
        raise SettingsError(f"rewarm config {source}: unknown keys {', '.join(unknown)}")
    settings = Settings(**{k: _coerce(k, v, getattr(defaults, k), source) for k, v in raw.items()})
    odd = sorted(set(settings.warm_after) - set(WARM_AFTER))
    if odd:
        raise SettingsError(f"rewarm config {source}: warm_after may name {', '.join(WARM_AFTER)}, not {odd[0]!r}")
    bad = [e for e in settings.namespace_registries if "=" not in e or not e.split("=", 1)[1]]
    if bad:
        raise SettingsError(f"rewarm config {source}: namespace_registries entries are NAMESPACE=HOST[:PORT][/PATH], "
                            f"not {bad[0][:80]!r}")
    if not 1 <= settings.restore_threads <= 64:
        raise SettingsError(f"rewarm config {source}: restore_threads must be 1 to 64")
    if settings.event_log_max_bytes < EVENT_LOG_MIN_BYTES:
        raise SettingsError(f"rewarm config {source}: event_log_max_bytes must be at least {EVENT_LOG_MIN_BYTES}")
    return settings
