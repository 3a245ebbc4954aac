"""Plain values of rewarm: names, annotations, settings, errors, layout, manifest, fingerprint,
events. Nothing here touches the system (files, processes, network)."""
