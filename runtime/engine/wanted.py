"""What a restoring create asks of the store, handed to the pull on a miss and to the restore: the
container's request, its pod's namespace and, worked out once when first asked for (a create that
finds no entry runs no `runc --version`), its fingerprint on this node."""
from __future__ import annotations

import functools
from dataclasses import dataclass

from runtime.engine import fingerprinting
from runtime.model.annotations import Request
from runtime.model.fingerprint import Fingerprint
from runtime.model.oci_spec import Spec
from runtime.model.settings import Settings


@dataclass(frozen=True)
class Wanted:
    request: Request
    namespace: str
    spec: Spec            # as rewarm-runc will run it (after prepare_spec)
    settings: Settings

    @functools.cached_property
    def fingerprint(self) -> Fingerprint:
        return fingerprinting.of_container(self.spec, self.settings)


def of(spec: Spec, settings: Settings, request: Request, namespace: str) -> Wanted:
    return Wanted(request, namespace, spec, settings)
