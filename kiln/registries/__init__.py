"""Model registries kiln reads programs from and writes results back to."""
