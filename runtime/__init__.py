"""rewarm: start AI inference workers in seconds by restoring CRIU + CUDA checkpoints.

The sub-packages are layers, lowest first; each imports only from the ones below it
(import-linter checks this, see pyproject.toml):

    front      the stdlib-only hot path of rewarm-runc-engine (argv, pass-through)
    model      plain values: names, annotations, settings, errors, layout, manifest, fingerprint, events, engines
    host       the node's own files and facts: file helpers, its config file, its fingerprint key, versions
    observe    what rewarm tells: the event log, the runtime log, metrics, progress
    container  a container's processes as the kernel and runc show them: runc, CRIU, cgroups, mounts
    netns      a pod's network namespace: HTTP to the worker (readiness, hooks), its bound addresses
    snapshot   a snapshot on the node: the store, its checked files, archives, rootfs diff, page cache
    registry   OCI registries: the client, transfers, the wire formats, index, signatures, encryption
    gpu        the CUDA driver's checkpoint API, NVML, the cuda-checkpoint command
    clients    gRPC clients of CRI and of containerd's own API
    engine     the pipelines: create (restore or cold start), capture, on-ready capture, pull, push, bake
    node       node set-up and the node agent: doctor, install, containerd's config, agent
    lab        the demo, test and benchmark harness (nothing below imports it)
    cli        the operator's `rewarm` command
"""
