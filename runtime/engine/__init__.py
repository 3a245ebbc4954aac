"""The pipelines: create (restore or cold start), capture, on-ready capture, bake, import/export."""
