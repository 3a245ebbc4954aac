"""rewarm: start AI inference workers in seconds by restoring CRIU + CUDA checkpoints.

The sub-packages are layers, lowest first; each imports only from the ones below it
(import-linter checks this, see pyproject.toml):

    front     the stdlib-only hot path of rewarm-runc-engine (argv, pass-through)
    model     plain values: names, annotations, settings, errors, layout, manifest, fingerprint, events
    adapters  the outside world: runc, CRIU, the store, archives, logs, HTTP in a network namespace
    gpu       the CUDA driver's checkpoint API, NVML, the cuda-checkpoint command
    clients   gRPC clients of CRI and of containerd's own API
    engine    the pipelines: create (restore or cold start), capture, on-ready capture, bake, import/export
    node      node set-up: doctor, install
    lab       the demo, test and benchmark harness (nothing below imports it)
    cli       the operator's `rewarm` command
"""
