"""Autoencoders and their parts. Importing this package registers every built-in part and the
`autoencoder` model that combines them (models.parts, models.autoencoder)."""
# pylint: disable=unused-import  (each import registers its parts by name)
from convae_jax.models import autoencoder, corruptions
from convae_jax.models.backbones import resnet, seed
from convae_jax.models.bottlenecks import fsq, gaussian, identity, vq
from convae_jax.models.likelihoods import discretized_logistic, logistic_mixture, mse
from convae_jax.models.base import Autoencoder, AutoencoderOutput, per_example_mse
from convae_jax.models.parts import BACKBONES, BOTTLENECKS, CORRUPTIONS, LIKELIHOODS
from convae_jax.models.registry import create_model, get_model_class, known_models, register
