"""The user-facing contract: `rewarm.dev/*` annotations, parsed once into a frozen Request.

Also reads the Kubernetes facts that containerd (io.kubernetes.cri.*) and CRI-O
(io.kubernetes.*) put into config.json: the pod's namespace, whether this is the sandbox.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from enum import Enum
from typing import Mapping, TypeVar

from runtime.front.names import ANNOTATION_PREFIX
from runtime.model.errors import InvalidInput
from runtime.model.names import validate_name, validate_namespace
from runtime.model.registry_ref import parse as parse_ref

PREFIX = ANNOTATION_PREFIX
SNAPSHOT = PREFIX + "snapshot"
CAPTURE = PREFIX + "capture"
READY_FILE = PREFIX + "ready-file"
READY_HTTP = PREFIX + "ready-http"
FALLBACK = PREFIX + "fallback"
QUIESCE_HTTP = PREFIX + "quiesce-http"
RESUME_HTTP = PREFIX + "resume-http"
SNAPSHOT_REF = PREFIX + "snapshot-ref"
PUSH = PREFIX + "push"
KNOWN = frozenset({SNAPSHOT, CAPTURE, READY_FILE, READY_HTTP, FALLBACK, QUIESCE_HTTP, RESUME_HTTP, SNAPSHOT_REF, PUSH})

# Written by rewarm-runc into config.json, never by users (outside the user's prefix).
INTERNAL_PREFIX = "internal.rewarm.dev/"
ENTRY_KEY = INTERNAL_PREFIX + "entry"               # the store entry being restored (for rewarm-hook)
IMAGE_DIGEST_KEY = INTERNAL_PREFIX + "image-digest"  # the image digest containerd has for the container

DEFAULT_READY_FILE = "/run/rewarm/ready"
URL_RE = re.compile(r"^http://[^/\s]+(/\S*)?$")

NAMESPACE_KEYS = ("io.kubernetes.cri.sandbox-namespace", "io.kubernetes.pod.namespace")
CONTAINER_TYPE_KEYS = ("io.kubernetes.cri.container-type", "io.kubernetes.cri-o.ContainerType")


class Fallback(Enum):
    COLD = "cold"
    FAIL = "fail"


class Capture(Enum):
    NEVER = "never"
    ON_READY = "on-ready"


class Push(Enum):
    NEVER = "never"
    ON_CAPTURE = "on-capture"


@dataclass(frozen=True)
class Request:
    """What a container asks of rewarm."""
    snapshot: str
    capture: Capture = Capture.NEVER
    ready_file: str = DEFAULT_READY_FILE
    ready_http: str | None = None
    fallback: Fallback = Fallback.COLD
    quiesce_http: str | None = None     # POSTed before a capture: the worker drops what need not be saved
    resume_http: str | None = None      # POSTed after a capture (the source) and after a restore
    snapshot_ref: str | None = None     # REGISTRY/REPO:TAG to pull from on a miss (and push to)
    push: Push = Push.NEVER             # push to snapshot_ref after an on-ready capture


def wants_rewarm(annotations: Mapping[str, str]) -> bool:
    return any(k.startswith(PREFIX) for k in annotations)


def is_sandbox(annotations: Mapping[str, str]) -> bool:
    return any(annotations.get(k) == "sandbox" for k in CONTAINER_TYPE_KEYS)


def namespace_of(annotations: Mapping[str, str]) -> str:
    """The pod's Kubernetes namespace, validated (it becomes a directory of the store)."""
    for key in NAMESPACE_KEYS:
        if annotations.get(key):
            return validate_namespace(annotations[key])
    return "default"


def wants_fail(annotations: Mapping[str, str]) -> bool:
    """rewarm.dev/fallback: fail, read even when other annotations are invalid."""
    return annotations.get(FALLBACK) == Fallback.FAIL.value


E = TypeVar("E", bound=Enum)


def _enum(enum: type[E], key: str, value: str | None, default: E) -> E:
    if value is None:
        return default
    try:
        return enum(value)
    except ValueError as e:
        allowed = " or ".join(repr(m.value) for m in enum)
        raise InvalidInput(f"invalid {key}: {value!r} (expected {allowed})") from e


def parse(annotations: Mapping[str, str]) -> Request:
    """Validate every rewarm.dev/* annotation; raise InvalidInput naming the first bad one."""
    unknown = sorted(k for k in annotations if k.startswith(PREFIX) and k not in KNOWN)
    if unknown:
        raise InvalidInput(f"unknown annotation {unknown[0]} (known: {', '.join(sorted(KNOWN))})")
    if SNAPSHOT not in annotations:
        raise InvalidInput(f"{SNAPSHOT} is required when other {PREFIX} annotations are set")
    ready_file = annotations.get(READY_FILE, DEFAULT_READY_FILE)
    if not ready_file.startswith("/") or "\0" in ready_file or "/../" in ready_file + "/":
        raise InvalidInput(f"invalid {READY_FILE}: {ready_file!r} (an absolute path inside the container)")
    for key in (READY_HTTP, QUIESCE_HTTP, RESUME_HTTP):
        if key in annotations and not URL_RE.match(annotations[key]):
            raise InvalidInput(f"invalid {key}: {annotations[key]!r} (expected http://HOST:PORT/PATH)")
    snapshot_ref = annotations.get(SNAPSHOT_REF)
    if snapshot_ref is not None:
        snapshot_ref = str(parse_ref(snapshot_ref, SNAPSHOT_REF))
    push = _enum(Push, PUSH, annotations.get(PUSH), Push.NEVER)
    if push is Push.ON_CAPTURE and snapshot_ref is None:
        raise InvalidInput(f"{PUSH}: {push.value} needs {SNAPSHOT_REF} (where to push)")
    return Request(
        snapshot=validate_name(annotations[SNAPSHOT]),
        snapshot_ref=snapshot_ref,
        push=push,
        capture=_enum(Capture, CAPTURE, annotations.get(CAPTURE), Capture.NEVER),
        ready_file=ready_file,
        ready_http=annotations.get(READY_HTTP),
        quiesce_http=annotations.get(QUIESCE_HTTP),
        resume_http=annotations.get(RESUME_HTTP),
        fallback=_enum(Fallback, FALLBACK, annotations.get(FALLBACK), Fallback.COLD),
    )
