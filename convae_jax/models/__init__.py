"""Autoencoder variants. Importing this package registers every built-in model."""
# pylint: disable=unused-import  (each import registers its model by name)
from convae_jax.models import cae, denoising, resae, vae, vqvae
from convae_jax.models.base import Autoencoder, AutoencoderOutput, per_example_mse
from convae_jax.models.registry import create_model, get_model_class, known_models, register
