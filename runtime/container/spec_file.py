"""A bundle's config.json as the runtime will read it: loaded once, changed in memory by the
engine's steps, and written only when it differs from what is on disk, with the file's own mode,
right before the runtime runs (the restore's runc, or the cold start's create)."""
from __future__ import annotations

import json
import os

from runtime.host.files import read_json, write_json
from runtime.model import oci_spec
from runtime.model.oci_spec import Spec


NAME = "config.json"   # in an OCI bundle


def read(bundle: str) -> Spec:
    """The bundle's spec as it is on disk. Raises OSError or ValueError for a config.json that is
    missing or not a JSON object."""
    return oci_spec.parsed(read_json(os.path.join(bundle, NAME)))


class SpecFile:
    def __init__(self, bundle: str):
        """Raises OSError or ValueError for a config.json that is missing or not JSON."""
        self.path = os.path.join(bundle, NAME)
        self.spec: Spec = read(bundle)
        self._on_disk = self._text()
        self.writes = 0

    def _text(self) -> str:
        return json.dumps(self.spec, sort_keys=True)

    def flush(self) -> bool:
        """Write the spec if it changed since it was read or last written; whether it was."""
        text = self._text()
        if text == self._on_disk:
            return False
        write_json(self.path, self.spec, mode=os.stat(self.path).st_mode & 0o777)
        self._on_disk, self.writes = text, self.writes + 1
        return True
