"""TFDS datasets this project adds. Importing this package registers them."""
from convae_jax.datasets import photo_patches  # noqa: F401  (registers 'photo_patches')
