"""Priors over the code grid of an autoencoder with discrete codes (vq, fsq): the second stage
that makes a VQ-VAE a generative model. Each is registered by name (`config.model.name` of a
prior config, configs/cifar_prior.py) and trained by prior_train.py on the codes of a
trained first stage. A new prior is a new file that registers a `base.CodePrior`.
"""
# pylint: disable=unused-import  (each import registers its prior by name)
from convae_jax.models.priors import pixelcnn, transformer
from convae_jax.models.priors.base import (FILLED_IN, PRIORS, CodePrior, PriorOutput,
                                           create_prior, sample)
