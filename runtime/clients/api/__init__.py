"""rewarm's own protobuf definitions (a subset of CRI v1 and of containerd's API) and their Python
modules, generated from the .proto files next to this one by grpcio-tools on first use (setup runs
it ahead: `python -m runtime.clients.api.generate`). Nothing generated is kept in the source tree."""
from __future__ import annotations

import importlib
import os
import tempfile
from types import ModuleType

HERE = os.path.dirname(os.path.abspath(__file__))
PROTOS = ("cri", "containerd")


def generate() -> None:
    """Run protoc for every .proto here; each module appears with one rename (safe to race)."""
    import grpc_tools
    from grpc_tools import protoc
    include = os.path.join(os.path.dirname(grpc_tools.__file__), "_proto")  # google/protobuf/*.proto
    with tempfile.TemporaryDirectory(dir=HERE, prefix=".gen-") as out:
        for name in PROTOS:
            code = protoc.main(["protoc", f"-I{HERE}", f"-I{include}", f"--python_out={out}",
                                os.path.join(HERE, f"{name}.proto")])
            if code != 0:
                raise RuntimeError(f"protoc failed on {name}.proto (exit {code})")
        for name in PROTOS:
            os.replace(os.path.join(out, f"{name}_pb2.py"), os.path.join(HERE, f"{name}_pb2.py"))


def load(name: str) -> ModuleType:
    module = f"runtime.clients.api.{name}_pb2"
    stale = os.path.getmtime(os.path.join(HERE, f"{name}.proto")) > _mtime(os.path.join(HERE, f"{name}_pb2.py"))
    if stale:
        generate()
        importlib.invalidate_caches()
    return importlib.import_module(module)


def _mtime(path: str) -> float:
    try:
        return os.path.getmtime(path)
    except OSError:
        return 0.0

