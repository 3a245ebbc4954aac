"""Snapshots in OCI distribution registries: the client (oras-py with rewarm's auth, TLS and retry
rules), the native layout (one blob per file, large page images in chunks), parallel transfers
into the store's staging, and CRI-O / Podman checkpoint images."""
