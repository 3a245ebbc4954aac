"""OCI hooks of thaw (prestart / poststop)."""
