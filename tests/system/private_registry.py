"""A registry for one test module, on a docker engine of that module's own.

registry_lab's Engine is one per checkout, and every test session stops it when it ends (conftest's
no_docker_engine_left_behind): a session that ends while another runs registry tests takes their
registry down mid-test. An engine under the module's own directories is stopped only by the module."""
from __future__ import annotations

import os
import shutil
from typing import Iterator

from registry_fixtures import free_port
from runtime.lab.registry_lab import Engine, Registry

RUN = "/run/rewarm-lab"


def private_registry(directory: str, name: str) -> Iterator[Registry]:
    """A started registry (TLS, login) whose engine lives under `directory` and RUN/NAME-PID."""
    run = os.path.join(RUN, f"{name}-{os.getpid()}")
    engine = Engine(os.path.join(directory, "engine"), run)
    try:
        registry = Registry(os.path.join(directory, "registry"), free_port(), engine=engine).start()
        try:
            yield registry
        finally:
            registry.stop()
    finally:
        engine.stop()
        shutil.rmtree(run, ignore_errors=True)
