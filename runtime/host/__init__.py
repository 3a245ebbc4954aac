"""The node's own files and facts: file helpers (atomic JSON, fsync, owned dirs), its rewarm
config file, its fingerprint key, its kernel, CPU and tool versions."""
