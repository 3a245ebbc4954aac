"""One gRPC channel to a daemon's unix socket, with unary calls on rewarm's own protobuf messages:
the base of the CRI client and of the containerd API client."""
from __future__ import annotations

from typing import Any, Self

import grpc

from runtime.model.errors import ClientError


class UnixClient:
    metadata: tuple[tuple[str, str], ...] = ()

    def __init__(self, address: str, timeout: float):
        self.address, self.timeout = address, timeout
        self._channel = grpc.insecure_channel(f"unix://{address}")

    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _call(self, method: str, request: Any, response: Any, timeout: float | None = None) -> Any:
        call = self._channel.unary_unary(method, request_serializer=type(request).SerializeToString,
                                         response_deserializer=response.FromString)
        try:
            return call(request, timeout=timeout or self.timeout, metadata=self.metadata or None)
        except grpc.RpcError as e:
            raise self.error(method.rsplit("/", 1)[-1], e) from e

    def error(self, method: str, e: grpc.RpcError) -> ClientError:
        return ClientError(f"{method} at {self.address}: {e.code().name}: {e.details()}")
