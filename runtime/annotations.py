"""The user-facing contract: `thaw.dev/*` annotations, validated into one frozen value.

Also reads the Kubernetes facts that containerd (io.kubernetes.cri.*) and CRI-O
(io.kubernetes.*) put into config.json: the pod's namespace, whether this is the sandbox.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from enum import Enum

PREFIX = "thaw.dev/"
SNAPSHOT = PREFIX + "snapshot"
CAPTURE = PREFIX + "capture"
READY_FILE = PREFIX + "ready-file"
READY_HTTP = PREFIX + "ready-http"
FALLBACK = PREFIX + "fallback"
QUIESCE_HTTP = PREFIX + "quiesce-http"
RESUME_HTTP = PREFIX + "resume-http"
KNOWN = frozenset({SNAPSHOT, CAPTURE, READY_FILE, READY_HTTP, FALLBACK, QUIESCE_HTTP, RESUME_HTTP})
# Set by thaw-runc in config.json, not by users: the store entry being restored (for thaw-hook).
ENTRY_KEY = "internal.thaw.dev/entry"
URL_RE = re.compile(r"^http://[^/\s]+(/\S*)?$")

DEFAULT_READY_FILE = "/run/thaw/ready"
# A snapshot name is a DNS-1123 label-ish word: it becomes a directory name in the store.
NAME_RE = re.compile(r"^[a-z0-9]([a-z0-9._-]{0,61}[a-z0-9])?$")

NAMESPACE_KEYS = ("io.kubernetes.cri.sandbox-namespace", "io.kubernetes.pod.namespace")
CONTAINER_TYPE_KEYS = ("io.kubernetes.cri.container-type", "io.kubernetes.cri-o.ContainerType")


class AnnotationError(ValueError):
    """An annotation value a user must fix; the message names the annotation and the value."""


class Fallback(Enum):
    COLD = "cold"
    FAIL = "fail"


class Capture(Enum):
    NEVER = "never"
    ON_READY = "on-ready"


@dataclass(frozen=True)
class ThawRequest:
    snapshot: str
    capture: Capture = Capture.NEVER
    ready_file: str = DEFAULT_READY_FILE
    ready_http: str | None = None
    fallback: Fallback = Fallback.COLD
    quiesce_http: str | None = None     # POSTed before a capture: the worker drops what need not be saved
    resume_http: str | None = None      # POSTed after a capture (the source) and after a restore


def wants_thaw(annotations: dict[str, str]) -> bool:
    return any(k.startswith(PREFIX) for k in annotations)


def is_sandbox(annotations: dict[str, str]) -> bool:
    return any(annotations.get(k) == "sandbox" for k in CONTAINER_TYPE_KEYS)


def namespace_of(annotations: dict[str, str]) -> str:
    for key in NAMESPACE_KEYS:
        if annotations.get(key):
            return annotations[key]
    return "default"


def validate_name(name: str, what: str = "snapshot name") -> str:
    if not NAME_RE.match(name or ""):
        raise AnnotationError(
            f"invalid {what} {name!r}: use 1-63 lowercase letters, digits, '.', '_' or '-', "
            "starting and ending with a letter or digit")
    return name


def _enum(enum: type[Enum], key: str, value: str | None, default: Enum) -> Enum:
    if value is None:
        return default
    try:
        return enum(value)
    except ValueError:
        allowed = " or ".join(repr(m.value) for m in enum)  # type: ignore[attr-defined]
        raise AnnotationError(f"invalid {key}: {value!r} (expected {allowed})") from None


def parse(annotations: dict[str, str]) -> ThawRequest:
    """Validate every thaw.dev/* annotation; raise AnnotationError naming the first bad one."""
    unknown = sorted(k for k in annotations if k.startswith(PREFIX) and k not in KNOWN)
    if unknown:
        raise AnnotationError(f"unknown annotation {unknown[0]} (known: {', '.join(sorted(KNOWN))})")
    if SNAPSHOT not in annotations:
        raise AnnotationError(f"{SNAPSHOT} is required when other thaw.dev/ annotations are set")
    ready_file = annotations.get(READY_FILE, DEFAULT_READY_FILE)
    if not ready_file.startswith("/") or "\0" in ready_file or "/../" in ready_file + "/":
        raise AnnotationError(f"invalid {READY_FILE}: {ready_file!r} (an absolute path inside the container)")
    for key in (READY_HTTP, QUIESCE_HTTP, RESUME_HTTP):
        if key in annotations and not URL_RE.match(annotations[key]):
            raise AnnotationError(f"invalid {key}: {annotations[key]!r} (expected http://HOST:PORT/PATH)")
    return ThawRequest(
        snapshot=validate_name(annotations[SNAPSHOT]),
        capture=_enum(Capture, CAPTURE, annotations.get(CAPTURE), Capture.NEVER),  # type: ignore[arg-type]
        ready_file=ready_file,
        ready_http=annotations.get(READY_HTTP),
        quiesce_http=annotations.get(QUIESCE_HTTP),
        resume_http=annotations.get(RESUME_HTTP),
        fallback=_enum(Fallback, FALLBACK, annotations.get(FALLBACK), Fallback.COLD),  # type: ignore[arg-type]
    )
