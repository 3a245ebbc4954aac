"""The hot path: what every runc verb of the node may run. Standard library only, and little of it."""
