"""thaw: restore warmed-up inference workers instead of starting them."""
