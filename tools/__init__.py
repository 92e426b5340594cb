"""Developer scripts (not part of the `convae_jax` package). Run them from the repo root."""
