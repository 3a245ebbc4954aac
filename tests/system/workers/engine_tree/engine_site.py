"""The engine stand-in's packages (uvicorn, uvloop, pyzmq) for this machine's /usr/bin/python3, in a
directory the tests bind into its containers at /opt/engine-site.

Usage: python deps.py [SITE]   (idempotent; packaging/setup.sh runs it)
"""
import os
import subprocess
import sys

SITE = "/var/tmp/rewarm-bench/engine-site"
PACKAGES = ["uvicorn==0.38.0", "h11", "click", "uvloop==0.23.0", "pyzmq==27.3.0"]
WORKER_PYTHON = "/usr/bin/python3"


def ready(site: str = SITE) -> bool:
    return subprocess.run([WORKER_PYTHON, "-c", "import uvicorn, uvloop, zmq"], env={**os.environ, "PYTHONPATH": site},
                          capture_output=True).returncode == 0


def ensure(site: str = SITE) -> str:
    if not ready(site):
        version = subprocess.run([WORKER_PYTHON, "-c", "import sys; print('%d.%d' % sys.version_info[:2])"],
                                 capture_output=True, text=True, check=True).stdout.strip()
        subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--upgrade", "--target", site,
                        "--python-version", version, "--implementation", "cp", "--only-binary=:all:", *PACKAGES],
                       check=True)
        if not ready(site):
            raise RuntimeError(f"{site}: uvicorn, uvloop and pyzmq still do not import for {WORKER_PYTHON}")
    return site


if __name__ == "__main__":
    print(f"engine stand-in packages ready in {ensure(*sys.argv[1:2])}")
