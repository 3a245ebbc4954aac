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


def importable(site: str, modules: str) -> bool:
    return subprocess.run([WORKER_PYTHON, "-c", f"import {modules}"], env={**os.environ, "PYTHONPATH": site},
                          capture_output=True).returncode == 0


def install(site: str, packages: list[str], modules: str) -> str:
    """`packages` into `site` for the worker's Python version (it may differ from this pip's:
    Debian 13 has 3.13), unless `modules` import from there already."""
    if not importable(site, modules):
        version = subprocess.run([WORKER_PYTHON, "-c", "import sys; print('%d.%d' % sys.version_info[:2])"],
                                 capture_output=True, text=True, check=True).stdout.strip()
        subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--upgrade", "--target", site,
                        "--python-version", version, "--implementation", "cp", "--only-binary=:all:", *packages],
                       check=True)
        if not importable(site, modules):
            raise RuntimeError(f"{site}: {modules} still do not import for {WORKER_PYTHON}")
    return site


def ready(site: str = SITE) -> bool:
    return importable(site, "torch, transformers, safetensors")


def ensure(site: str = SITE) -> str:
    return install(site, PACKAGES, "torch, transformers, safetensors")


if __name__ == "__main__":
    print(f"worker packages ready in {ensure(*sys.argv[1:2])}")
