"""rewarm installed from a wheel into a fresh venv (not editable, no checkout on its path) works:
`rewarm doctor` finds its packaged config files, and a runc-level capture and restore run with only
that installation's commands (rewarm-runc, its engine and hooks, `rewarm capture`)."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest

from runtime.lab.runc_lab import CHECKOUT, Lab

SNAPSHOT = {"rewarm.dev/snapshot": "from-wheel"}


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """bin/ of a fresh venv with rewarm's wheel and its dependencies from the package index."""
    top = tmp_path_factory.mktemp("wheel")
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    subprocess.run([*pip, "wheel", "--no-deps", "-w", str(top / "dist"), CHECKOUT], check=True, capture_output=True)
    (wheel,) = (top / "dist").iterdir()
    subprocess.run([sys.executable, "-m", "venv", str(top / "venv")], check=True)
    venv_bin = top / "venv" / "bin"
    out = subprocess.run([str(venv_bin / "pip"), "--disable-pip-version-check", "-q", "install", str(wheel)],
                         capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, out.stderr[-3000:]
    where = subprocess.run([str(venv_bin / "python"), "-c", "import runtime; print(runtime.__file__)"],
                           capture_output=True, text=True, cwd="/", check=True).stdout
    assert where.startswith(str(top / "venv")), where     # the wheel's copy, not this checkout
    return venv_bin


def test_doctor_of_a_wheel_install_reads_its_packaged_schema(installed, node):
    out = subprocess.run([str(installed / "rewarm"), "doctor"], capture_output=True, text=True, cwd="/")
    assert out.returncode == 0, out.stdout + out.stderr
    assert "Traceback" not in out.stderr
    assert f"OK    config                   {os.environ['REWARM_CONFIG']}" in out.stdout   # validated against the schema
    assert "OK    criu check" in out.stdout


def test_a_wheel_install_captures_and_restores_at_the_runc_level(installed, node, tmp_path):
    directory = str(tmp_path / "lab")
    os.makedirs(directory)
    os.chmod(directory, 0o755)
    lab = Lab(directory)
    runtime = str(installed / "rewarm-runc")
    try:
        source = lab.create("wsrc", lab.worker(SNAPSHOT), runtime=runtime)
        answer, _ = source.wait_ready()
        out = subprocess.run([str(installed / "rewarm"), "capture", "--root", lab.runc_root, source.cid,
                              "--name", "from-wheel", "--leave-running"], capture_output=True, text=True, cwd="/")
        assert out.returncode == 0 and "captured default/from-wheel" in out.stdout, out.stderr
        restored = lab.create("wdst", lab.worker(SNAPSHOT), runtime=runtime)
        assert restored.get()["boot_id"] == answer["boot_id"], restored.runtime_log()
        spec = open(os.path.join(restored.bundle.path, "config.json")).read()
        assert str(installed / "rewarm-hook") in spec          # the hooks of that installation were injected
    finally:
        lab.close()
