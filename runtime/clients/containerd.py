"""A small client of containerd's own gRPC API (not CRI): what rewarm needs to name an image by its
digest and to checkpoint a task through containerd (Tasks.Checkpoint, the checkpoint bridge).

containerd serves it on its main socket; every call carries the namespace as metadata.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import Any

import grpc

from runtime.clients import api
from runtime.clients.grpc_unix import UnixClient
from runtime.model.errors import ClientError
from runtime.model import oci_spec
from runtime.model.oci_spec import Spec

pb: Any = api.load("containerd")

DEFAULT_ADDRESS = "/run/containerd/containerd.sock"
DEFAULT_RUNC_ROOT = "/run/containerd/runc"      # the runc shim's default state root (+ /<namespace>)
CHECKPOINT_OPTIONS_URL = "containerd.runc.v1.CheckpointOptions"
RUNC_OPTIONS_URL = "containerd.runc.v1.Options"


class ContainerdError(ClientError):
    pass


def address_from_shim_env() -> str | None:
    """containerd starts runtime shims with TTRPC_ADDRESS=<its socket>.ttrpc; runc inherits it."""
    ttrpc = os.environ.get("TTRPC_ADDRESS", "")
    return ttrpc[: -len(".ttrpc")] if ttrpc.endswith(".ttrpc") else None


@dataclass(frozen=True)
class ContainerInfo:
    id: str
    image: str
    runtime: str
    runc_root: str                # runc's --root for this container (the shim's Root option + namespace)
    spec: Spec


class Containerd(UnixClient):
    def __init__(self, address: str = DEFAULT_ADDRESS, namespace: str = "k8s.io", timeout: float = 10.0):
        super().__init__(address, timeout)
        self.namespace = namespace
        self.metadata = (("containerd-namespace", namespace),)

    def error(self, method: str, e: grpc.RpcError) -> ClientError:
        return ContainerdError(f"containerd {method} at {self.address}: {e.code().name}: {e.details()}")

    def version(self) -> str:
        return str(self._call("/containerd.services.version.v1.Version/Version", pb.Empty(), pb.VersionResponse).version)

    def container(self, container_id: str) -> ContainerInfo:
        c = self._call("/containerd.services.containers.v1.Containers/Get",
                       pb.GetContainerRequest(id=container_id), pb.GetContainerResponse).container
        root = DEFAULT_RUNC_ROOT
        if c.runtime.options.type_url.endswith(RUNC_OPTIONS_URL):
            root = pb.RuncOptions.FromString(c.runtime.options.value).root or root
        spec = oci_spec.parsed(json.loads(c.spec.value)) if c.spec.value else Spec()
        return ContainerInfo(c.id, c.image, c.runtime.name, os.path.join(root, self.namespace), spec)

    def image_digest(self, name: str) -> str:
        image = self._call("/containerd.services.images.v1.Images/Get",
                           pb.GetImageRequest(name=name), pb.GetImageResponse).image
        return str(image.target.digest)

    def checkpoint(self, container_id: str, image_path: str, work_path: str, exit: bool, timeout: float) -> None:
        """Checkpoint the task into image_path (CRIU images); `exit` stops it afterwards. With
        image_path set, containerd writes nothing to its content store: the images are all there is."""
        options = pb.CheckpointOptions(exit=exit, open_tcp=True, external_unix_sockets=True, file_locks=True,
                                       image_path=image_path, work_path=work_path)
        request = pb.CheckpointTaskRequest(container_id=container_id)
        request.options.type_url = CHECKPOINT_OPTIONS_URL
        request.options.value = options.SerializeToString()
        self._call("/containerd.services.tasks.v1.Tasks/Checkpoint", request, pb.CheckpointTaskResponse,
                   timeout=timeout)
