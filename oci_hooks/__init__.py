"""rewarm's OCI hooks (prestart / poststop): `rewarm-hook`."""
