"""Names that become directory names in the store: snapshot names and Kubernetes namespaces.

They come from annotations, config.json, the command line and archives, so they are validated
everywhere they enter, and nothing that is not a plain DNS-label-like word gets through."""
from __future__ import annotations

import re

from runtime.model.errors import InvalidInput, shown

NAME_RE = re.compile(r"[a-z0-9]([a-z0-9._-]{0,61}[a-z0-9])?")   # fullmatch: `$` would let a final "\n" in


def validate_name(name: str, what: str = "snapshot name") -> str:
    if not isinstance(name, str) or not NAME_RE.fullmatch(name):
        raise InvalidInput(
            f"invalid {what} {shown(name)}: use 1-63 lowercase letters, digits, '.', '_' or '-', "
            "starting and ending with a letter or digit")
    return name


def validate_namespace(namespace: str) -> str:
    return validate_name(namespace, "namespace")
