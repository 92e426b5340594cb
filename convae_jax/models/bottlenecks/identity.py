"""`identity`: the decoder takes the encoder's features as they are (a plain autoencoder)."""
from convae_jax.models import parts


@parts.BOTTLENECKS.register('identity')
class Identity(parts.Bottleneck):

  def __call__(self, features, train, image_dims):
    del train, image_dims
    return parts.BottleneckOutput(latents=features)
