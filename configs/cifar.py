"""The seed convolutional autoencoder on CIFAR-10.

    python launch.py --config configs/cifar.py --workdir /tmp/cae
    python launch.py --config configs/cifar.py --config.num_epochs=5 --config.data_dir=DIR
"""
import ml_collections

VARIANTS = ('cae',)


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  """`arg` picks a variant (`configs/cifar.py:cae`); none gives the seed model."""
  variant = arg or 'cae'
  if variant not in VARIANTS:
    raise ValueError(f'unknown variant {variant!r} for configs/cifar.py; known: {", ".join(VARIANTS)}')
  config = ml_collections.ConfigDict()

  # Data: a TFDS name; data_dir None means TFDS's default (or $TFDS_DATA_DIR).
  config.dataset = 'cifar10'
  config.data_dir = ml_collections.config_dict.placeholder(str)
  config.train_split = 'train'
  config.eval_split = 'test'
  # Pixels are scaled into this range; it must lie inside what the model's output can reach
  # (the seed's Sigmoid gives [0, 1]).
  config.input_range = (0.0, 1.0)

  config.model = ml_collections.ConfigDict()
  config.model.name = variant
  config.model.features = (16, 32)

  config.optimizer = 'adam'
  config.learning_rate = 1e-3

  # Length: num_train_steps when positive, else num_epochs over the train split.
  config.batch_size = 128  # Global, over all devices of all processes.
  config.num_epochs = 20.0
  config.num_train_steps = -1

  config.eval_batch_size = 500
  config.log_every_steps = 100
  config.eval_every_steps = 2000  # Also evaluated at the end.
  config.checkpoint_every_steps = 1000  # Also saved at the end.
  config.max_to_keep = 3
  config.num_grid_images = 32  # Test images shown beside their reconstructions.
  config.profile_num_steps = 5  # Steps traced into the workdir for TensorBoard; 0 = off.

  config.seed = 0
  return config
