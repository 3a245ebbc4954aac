"""Fixtures for the system tests: real runc, CRIU, containerd, Podman and, where present, a GPU.

Everything a test creates (store, runc root, bundles, network namespaces, cgroups) lives under one
temporary directory or carries the lab's tag, and is removed afterwards. The node config of the
tests starts from the file $REWARM_CONFIG names, if any (a GPU host names its runtime, CRIU and
`network-lock skip` there), with the store, event log and metrics moved into the temp directory.
"""
from __future__ import annotations

import os
import shutil
import tempfile
from typing import Iterator

import pytest

from helpers import config_named
from runtime.host import settings_file
from runtime.lab.private_node import write_config
from runtime.lab.runc_lab import Lab
from runtime.model.settings import Settings


@pytest.fixture(scope="session")
def node() -> Iterator[Settings]:
    """A rewarm configuration of our own: store, event log and CRIU config in a temp dir."""
    top = tempfile.mkdtemp(prefix="rewarm-test-")
    os.chmod(top, 0o755)
    path = write_config(top)
    with config_named(path):
        yield settings_file.load(path)
    shutil.rmtree(top, ignore_errors=True)


@pytest.fixture
def lab(node: Settings, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    directory = str(tmp_path_factory.mktemp("lab"))
    os.chmod(directory, 0o755)
    the_lab = Lab(directory)
    yield the_lab
    the_lab.close()


@pytest.fixture(scope="session", autouse=True)
def no_docker_engine_left_behind() -> Iterator[None]:
    """The registry tests start a private dockerd (testcontainers needs one); it ends with the session."""
    yield
    from runtime.lab.registry_lab import Engine
    Engine().stop()
