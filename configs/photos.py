"""The seed model on `photo_patches`: 32x32 patches of photographs shipped inside scikit-image.

Needs no network and no download: the way to see the project work on any machine.
    python launch.py --config configs/photos.py --workdir /tmp/photos
"""
import ml_collections

from configs import cifar


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  config = cifar.get_config(arg)
  config.dataset = 'photo_patches'
  config.num_epochs = 30.0
  config.eval_every_steps = 200
  config.checkpoint_every_steps = 200
  config.log_every_steps = 20
  return config
