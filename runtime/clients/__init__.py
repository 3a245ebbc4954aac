"""gRPC clients on unix sockets: CRI v1 (what kubelet calls) and containerd's own API, built on
rewarm's own subset of their .proto files (clients/api)."""
