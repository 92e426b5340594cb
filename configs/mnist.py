"""The presets of configs/cifar.py on 28x28 grayscale digits (MNIST; Fashion-MNIST too).

The model takes and gives one channel; 28 divides by the presets' downsampling factor, 4.
    python launch.py --config configs/mnist.py --workdir /tmp/mnist
    python launch.py --config configs/mnist.py:vae --config.dataset=fashion_mnist --workdir W
"""
import ml_collections

from configs import cifar


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  """`arg` picks a preset of configs/cifar.py (`configs/mnist.py:vae`); none gives the seed."""
  config = cifar.get_config(arg)
  config.dataset = 'mnist'
  config.model.image_channels = 1
  config.num_epochs = 10.0
  return config
