"""The engine stand-in's packages (uvicorn, uvloop, pyzmq) for this machine's /usr/bin/python3, in a
directory the tests bind into its containers at /opt/engine-site. Installed as the LLM worker's are
(examples/llm-worker/deps.py, loaded by path: both files would be `deps` on sys.path).

Usage: python engine_site.py [SITE]   (idempotent; packaging/setup.sh runs it)
"""
import importlib.util
import os
import sys

SITE = "/var/tmp/rewarm-bench/engine-site"
PACKAGES = ["uvicorn==0.38.0", "h11", "click", "uvloop==0.23.0", "pyzmq==27.3.0"]
MODULES = "uvicorn, uvloop, zmq"
_DEPS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "..", "..", "examples", "llm-worker",
                     "deps.py")
_spec = importlib.util.spec_from_file_location("llm_worker_deps", _DEPS)
assert _spec is not None and _spec.loader is not None
_deps = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_deps)
WORKER_PYTHON = _deps.WORKER_PYTHON


def ready(site: str = SITE) -> bool:
    return bool(_deps.importable(site, MODULES))


def ensure(site: str = SITE) -> str:
    return str(_deps.install(site, PACKAGES, MODULES))


if __name__ == "__main__":
    print(f"engine stand-in packages ready in {ensure(*sys.argv[1:2])}")
