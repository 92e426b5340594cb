"""convae_jax: convolutional autoencoders in JAX/Flax, trained by one generic loop."""
