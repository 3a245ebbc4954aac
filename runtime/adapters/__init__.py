"""The outside world, each behind one small module: files, runc, CRIU, the snapshot store, rootfs
diffs, archives, logs, HTTP inside a network namespace."""
