"""A CRI v1 client: the calls kubelet makes to a container runtime, for rewarm's bake, demo and tests.

Requests are built from rewarm's own subset of the CRI protos (clients/api/cri.proto). Pods get
what kubelet gives them by default: their own network namespace, one PID namespace per container.
"""
from __future__ import annotations

import contextlib
import json
import os
import time
import uuid
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

import grpc

from runtime.clients import api
from runtime.clients.grpc_unix import UnixClient
from runtime.model.errors import ClientError

pb: Any = api.load("cri")
RUNTIME = "/runtime.v1.RuntimeService/"
IMAGES = "/runtime.v1.ImageService/"


class CriError(ClientError):
    def __init__(self, message: str, code: grpc.StatusCode | None = None):
        super().__init__(message)
        self.code = code


def pod_config(name: str, namespace: str = "default", annotations: dict[str, str] | None = None,
               log_directory: str = "", uid: str | None = None) -> Any:
    return pb.PodSandboxConfig(
        metadata=pb.PodSandboxMetadata(name=name, namespace=namespace, uid=uid or uuid.uuid4().hex, attempt=0),
        hostname=name, log_directory=log_directory, annotations=annotations or {},
        labels={"io.kubernetes.pod.name": name, "io.kubernetes.pod.namespace": namespace},
        linux=pb.LinuxPodSandboxConfig(security_context=pb.LinuxSandboxSecurityContext(
            namespace_options=pb.NamespaceOption(network=pb.POD, pid=pb.CONTAINER, ipc=pb.POD))))


@dataclass(frozen=True)
class Workload:
    """A pod of one container, as its spec would say it."""
    name: str                                  # the pod's
    image: str
    command: Sequence[str] = ()                # () = the image's
    namespace: str = "default"
    annotations: Mapping[str, str] = field(default_factory=dict)   # the pod's and the container's
    env: Mapping[str, str] = field(default_factory=dict)
    mounts: Sequence[tuple[str, str, bool]] = ()   # (host path, container path, read-only)
    container_name: str = "worker"
    uid: str = ""                              # the pod's, as the API server gave it ("": a new one)


def container_config(w: Workload, log_path: str = "") -> Any:
    return pb.ContainerConfig(
        metadata=pb.ContainerMetadata(name=w.container_name, attempt=0), image=pb.ImageSpec(image=w.image),
        command=list(w.command), envs=[pb.KeyValue(key=k, value=v) for k, v in w.env.items()],
        annotations=dict(w.annotations), log_path=log_path,
        mounts=[pb.Mount(host_path=h, container_path=c, readonly=ro) for h, c, ro in w.mounts],
        linux=pb.LinuxContainerConfig(security_context=pb.LinuxContainerSecurityContext(
            namespace_options=pb.NamespaceOption(network=pb.POD, pid=pb.CONTAINER, ipc=pb.POD))))


class Client(UnixClient):
    def __init__(self, address: str, timeout: float = 120.0):
        super().__init__(address, timeout)

    def error(self, method: str, e: grpc.RpcError) -> CriError:
        return CriError(f"CRI {method}: {e.code().name}: {e.details()}", e.code())

    # runtime
    def version(self) -> Any:
        return self._call(RUNTIME + "Version", pb.VersionRequest(version="v1"), pb.VersionResponse)

    def status(self, verbose: bool = False) -> Any:
        return self._call(RUNTIME + "Status", pb.StatusRequest(verbose=verbose), pb.StatusResponse)

    def run_pod(self, config: Any, handler: str = "") -> str:
        return str(self._call(RUNTIME + "RunPodSandbox", pb.RunPodSandboxRequest(config=config, runtime_handler=handler),
                              pb.RunPodSandboxResponse).pod_sandbox_id)

    def stop_pod(self, pod_id: str) -> None:
        self._call(RUNTIME + "StopPodSandbox", pb.StopPodSandboxRequest(pod_sandbox_id=pod_id), pb.StopPodSandboxResponse)

    def remove_pod(self, pod_id: str) -> None:
        self._call(RUNTIME + "RemovePodSandbox", pb.RemovePodSandboxRequest(pod_sandbox_id=pod_id),
                   pb.RemovePodSandboxResponse)

    def create_container(self, pod_id: str, config: Any, pod: Any) -> str:
        return str(self._call(RUNTIME + "CreateContainer", pb.CreateContainerRequest(
            pod_sandbox_id=pod_id, config=config, sandbox_config=pod), pb.CreateContainerResponse).container_id)

    def start_container(self, container_id: str) -> None:
        self._call(RUNTIME + "StartContainer", pb.StartContainerRequest(container_id=container_id),
                   pb.StartContainerResponse)

    def stop_container(self, container_id: str, timeout: int = 10) -> None:
        self._call(RUNTIME + "StopContainer", pb.StopContainerRequest(container_id=container_id, timeout=timeout),
                   pb.StopContainerResponse, timeout=timeout + 60)

    def remove_container(self, container_id: str) -> None:
        self._call(RUNTIME + "RemoveContainer", pb.RemoveContainerRequest(container_id=container_id),
                   pb.RemoveContainerResponse)

    def container_status(self, container_id: str) -> Any:
        return self._call(RUNTIME + "ContainerStatus", pb.ContainerStatusRequest(container_id=container_id),
                          pb.ContainerStatusResponse).status

    def container_info(self, container_id: str) -> dict[str, Any]:
        """The runtime's verbose detail of a container (containerd: pid, runtime spec, ...)."""
        response = self._call(RUNTIME + "ContainerStatus", pb.ContainerStatusRequest(
            container_id=container_id, verbose=True), pb.ContainerStatusResponse)
        info = json.loads(response.info.get("info") or "{}")
        return info if isinstance(info, dict) else {}

    def list_containers(self, pod_id: str = "") -> list[Any]:
        request = pb.ListContainersRequest(filter=pb.ContainerFilter(pod_sandbox_id=pod_id))
        return list(self._call(RUNTIME + "ListContainers", request, pb.ListContainersResponse).containers)

    def exec_sync(self, container_id: str, cmd: list[str], timeout: int = 30) -> Any:
        return self._call(RUNTIME + "ExecSync", pb.ExecSyncRequest(container_id=container_id, cmd=cmd, timeout=timeout),
                          pb.ExecSyncResponse, timeout=timeout + 30)

    # images
    def image_status(self, image: str) -> Any:
        """The image as CRI sees it, or None where CRI does not know it."""
        response = self._call(IMAGES + "ImageStatus", pb.ImageStatusRequest(image=pb.ImageSpec(image=image)),
                              pb.ImageStatusResponse)
        return response.image if response.HasField("image") else None


class Pod:
    """One pod with one container, created through CRI the way kubelet does it, and deleted the
    same way (stop and remove the container, then the sandbox)."""

    def __init__(self, address: str, log_root: str, workload: Workload, handler: str = "rewarm"):
        self.name = workload.name
        self.log_dir = os.path.join(log_root, f"{workload.namespace}_{workload.name}_{os.urandom(4).hex()}")
        os.makedirs(self.log_dir, exist_ok=True)
        self.client = Client(address)
        self.config = pod_config(workload.name, workload.namespace, dict(workload.annotations), self.log_dir,
                                 workload.uid or None)
        self.started = time.monotonic()
        self.pod_id = self.client.run_pod(self.config, handler)
        self.seconds = {"RunPodSandbox": time.monotonic() - self.started}   # what each CRI call took
        self.container_id = self.client.create_container(self.pod_id, container_config(workload, "worker.log"),
                                                         self.config)
        self.seconds["CreateContainer"] = time.monotonic() - self.started - sum(self.seconds.values())
        self.client.start_container(self.container_id)
        self.seconds["StartContainer"] = time.monotonic() - self.started - sum(self.seconds.values())

    @property
    def log_path(self) -> str:
        return os.path.join(self.log_dir, "worker.log")

    def log(self) -> str:
        try:
            with open(self.log_path, encoding="utf-8", errors="replace") as f:
                return f.read()
        except FileNotFoundError:
            return ""

    def status(self) -> Any:
        return self.client.container_status(self.container_id)

    def pid(self) -> int:
        return int(self.client.container_info(self.container_id)["pid"])

    def delete(self) -> None:
        with contextlib.suppress(ClientError):
            self.client.stop_container(self.container_id, timeout=10)
            self.client.remove_container(self.container_id)
        with contextlib.suppress(ClientError):
            self.client.stop_pod(self.pod_id)
            self.client.remove_pod(self.pod_id)
        self.client.close()
