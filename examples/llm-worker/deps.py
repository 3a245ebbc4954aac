"""The CPU worker's Python packages (torch, transformers) for this machine's /usr/bin/python3, in a
directory that tests and benchmarks bind into containers at /opt/torch and build into its image.

Usage: python deps.py [SITE]   (any pip of the same Python minor version installs them; idempotent)
"""
import os
import subprocess
import sys

SITE = "/var/tmp/thaw-bench/torch-site"
PACKAGES = ["torch==2.13.0", "transformers>=4.56", "safetensors", "numpy"]
WORKER_PYTHON = "/usr/bin/python3"


def ready(site: str = SITE) -> bool:
    return subprocess.run([WORKER_PYTHON, "-c", "import torch, transformers, safetensors"],
                          env={**os.environ, "PYTHONPATH": site}, capture_output=True).returncode == 0


def ensure(site: str = SITE) -> str:
    if not ready(site):
        subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--upgrade", "--target", site, *PACKAGES],
                       check=True)
        if not ready(site):
            raise RuntimeError(f"{site}: torch and transformers still do not import for {WORKER_PYTHON}")
    return site


if __name__ == "__main__":
    print(f"worker packages ready in {ensure(*sys.argv[1:2])}")
