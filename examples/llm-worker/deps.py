"""The CPU worker's Python packages (torch, transformers) for this machine's /usr/bin/python3, in a
directory that tests and benchmarks bind into containers at /opt/torch and build into its image.

Usage: python deps.py [SITE]   (idempotent)
"""
import os
import subprocess
import sys

SITE = "/var/tmp/rewarm-bench/torch-site"
PACKAGES = ["torch==2.13.0", "transformers>=4.56", "safetensors", "numpy"]
WORKER_PYTHON = "/usr/bin/python3"


def ready(site: str = SITE) -> bool:
    return subprocess.run([WORKER_PYTHON, "-c", "import torch, transformers, safetensors"],
                          env={**os.environ, "PYTHONPATH": site}, capture_output=True).returncode == 0


def ensure(site: str = SITE) -> str:
    """Install for the worker's Python version (it may differ from this pip's: Debian 13 has 3.13)."""
    if not ready(site):
        version = subprocess.run([WORKER_PYTHON, "-c", "import sys; print('%d.%d' % sys.version_info[:2])"],
                                 capture_output=True, text=True, check=True).stdout.strip()
        subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--upgrade", "--target", site,
                        "--python-version", version, "--implementation", "cp", "--only-binary=:all:", *PACKAGES],
                       check=True)
        if not ready(site):
            raise RuntimeError(f"{site}: torch and transformers still do not import for {WORKER_PYTHON}")
    return site


if __name__ == "__main__":
    print(f"worker packages ready in {ensure(*sys.argv[1:2])}")
