"""A container's process tree as the kernel and the runtime show it: runc, CRIU's options and
log, cgroups, mounts, the network lock, open files and sockets, the bundle's config.json."""
