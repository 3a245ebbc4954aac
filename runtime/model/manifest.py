"""manifest.json: rewarm's typed record of a snapshot, checked against config/manifest.schema.json.

Written once, at commit, by the capture, import or pull that made the entry; read on every restore.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass, field
from typing import Any, Mapping

from runtime.model.errors import InvalidInput
from runtime.model.fingerprint import Fingerprint
from runtime.model.resources import config_json

SCHEMA_VERSION = 1
PULLED_FROM = "pulled_from"   # source key: the reference a pull fetched the snapshot from


@dataclass(frozen=True)
class FileDigest:
    size: int
    sha256: str


@dataclass(frozen=True)
class RootfsInfo:
    kind: str = "none"             # overlay | none | imported
    diff_bytes: int = 0
    deleted: int = 0


@dataclass(frozen=True)
class CaptureInfo:
    seconds: float = 0.0
    checkpoint_seconds: float = 0.0
    leave_running: bool = False
    checkpoint_bytes: int = 0
    namespace: str = ""            # where the workload ran when captured: kept by push, pull and import


@dataclass(frozen=True)
class ReloadFile:
    """A file the worker reads back after a restore (its quiesce hook named it): warmed with the
    snapshot, never part of it."""
    path: str                      # in the container
    host: str                      # where the capture found it on its node
    size: int


@dataclass(frozen=True)
class Manifest:
    namespace: str
    name: str
    created: str                                   # RFC 3339
    fingerprint: Fingerprint
    fingerprint_id: str                            # fingerprint.ident() at capture: part of the entry's name
    source: Mapping[str, str]                      # container_id, bundle, runtime_root, imported_from, ...
    files: Mapping[str, FileDigest] = field(default_factory=dict)
    rootfs: RootfsInfo = RootfsInfo()
    capture: CaptureInfo = CaptureInfo()
    annotations: Mapping[str, str] = field(default_factory=dict)   # org.criu.checkpoint.* provenance
    gpu_uuids: tuple[str, ...] = ()                # GPUs the container used, in its device order
    gpu_processes: Mapping[str, tuple[str, ...]] = field(default_factory=dict)  # pid -> GPU UUIDs
    bound_addresses: tuple[str, ...] = ()          # specific local addresses of its sockets
    reload_files: tuple[ReloadFile, ...] = ()      # what the worker reads back on its resume hook

    def size(self) -> int:
        return sum(f.size for f in self.files.values())

    @property
    def captured_in(self) -> str:
        """The namespace whose workload this memory is (its secrets included): recorded at capture
        and kept by every push, pull and import; an older local capture's is its entry's namespace."""
        return self.capture.namespace or self.namespace

    def unreadable_from(self, namespaces: tuple[str, ...]) -> str | None:
        """Why a pod that may restore from `namespaces` (its own, then the node's shared ones) may not
        restore this snapshot; None when it may."""
        if self.source.get(PULLED_FROM) and not self.capture.namespace:
            return (f"it was pulled from {self.source[PULLED_FROM]} by an earlier rewarm, which did not keep the "
                    "namespace it was captured in: pull it again")
        if self.captured_in not in namespaces:
            return (f"it was captured in namespace {self.captured_in}, and only pods of that namespace restore it "
                    f"(unless the node's shared_namespaces names it)")
        return None

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "schema_version": SCHEMA_VERSION, "namespace": self.namespace, "name": self.name,
            "created": self.created, "fingerprint": self.fingerprint.to_json(), "fingerprint_id": self.fingerprint_id,
            "source": dict(self.source),
            "files": {k: {"size": v.size, "sha256": v.sha256} for k, v in sorted(self.files.items())},
            "rootfs": vars(self.rootfs).copy(), "capture": vars(self.capture).copy(),
            "annotations": dict(self.annotations), "bound_addresses": list(self.bound_addresses),
        }
        if self.gpu_uuids:
            out["gpu_uuids"] = list(self.gpu_uuids)
            out["gpu_processes"] = {k: list(v) for k, v in self.gpu_processes.items()}
        if self.reload_files:
            out["reload_files"] = [vars(f).copy() for f in self.reload_files]
        validate(out)
        return out

    @classmethod
    def from_json(cls, raw: Any, schema_checked: bool = False) -> "Manifest":
        """Raise InvalidInput naming the first field that breaks the schema (unless these very
        bytes passed it already: the store's sealed record says so)."""
        if not schema_checked:
            validate(raw)
        return cls(
            namespace=raw["namespace"], name=raw["name"], created=raw["created"],
            fingerprint=Fingerprint.from_json(raw["fingerprint"]), fingerprint_id=raw["fingerprint_id"],
            source=dict(raw["source"]),
            files={k: FileDigest(v["size"], v["sha256"]) for k, v in raw["files"].items()},
            rootfs=RootfsInfo(**raw.get("rootfs", {})), capture=CaptureInfo(**raw.get("capture", {})),
            annotations=dict(raw.get("annotations", {})),
            gpu_uuids=tuple(raw.get("gpu_uuids", ())),
            gpu_processes={k: tuple(v) for k, v in raw.get("gpu_processes", {}).items()},
            bound_addresses=tuple(raw.get("bound_addresses", ())),
            reload_files=tuple(ReloadFile(**f) for f in raw.get("reload_files", ())),
        )


@functools.cache
def _validator() -> Any:
    import jsonschema  # only the restore, capture and CLI paths pay for this import
    return jsonschema.Draft202012Validator(config_json("manifest.schema.json"))


def validate(raw: Any) -> None:
    error = next(iter(_validator().iter_errors(raw)), None)
    if error is not None:
        where = "/".join(str(p) for p in error.absolute_path) or "(top)"
        raise InvalidInput(f"manifest.json: {where}: {error.message}")
