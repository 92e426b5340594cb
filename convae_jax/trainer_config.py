"""Every key the trainer reads, with its default: the one place a trainer setting is defined.

Config files start from `defaults()` (configs/cifar.py does) and set the experiment's own
values and `model`; config_checks takes each key's type from here, so a new trainer setting
is one line below.
"""
import ml_collections

# What config.on_non_finite allows.
ON_NON_FINITE = ('stop', 'skip')
# What config.dtype allows: the activations' and convolutions' precision.
DTYPES = ('float32', 'bfloat16')
# What config.schedule allows (optax schedules of the step; optimizer.learning_rate_schedule).
SCHEDULES = ('constant', 'warmup_cosine', 'warmup_linear', 'warmup_rsqrt')
# What config.input_mode allows (data.py).
INPUT_MODES = ('auto', 'in_memory', 'streaming')


def defaults() -> ml_collections.ConfigDict:
  """The trainer's settings at their defaults; `model` is the config file's to set."""
  config = ml_collections.ConfigDict()

  # Data: a TFDS name; data_dir None means TFDS's default (or $TFDS_DATA_DIR).
  config.dataset = 'cifar10'
  config.data_dir = ml_collections.config_dict.placeholder(str)
  config.train_split = 'train'
  config.eval_split = 'test'
  # Pixels are scaled into this range; it must lie inside what the model's output can reach
  # (the seed's Sigmoid gives [0, 1]).
  config.input_range = (0.0, 1.0)
  # Resize each image's shorter side to this many pixels and crop its centre square, so a
  # dataset of any (or varied) image sizes trains at one shape; None keeps the dataset's.
  config.image_size = ml_collections.config_dict.placeholder(int)
  # INPUT_MODES: 'in_memory' decodes each split into every host's memory (small datasets;
  # resumes by a stateless shuffle); 'streaming' has each process read only its share of the
  # files through a shuffle buffer (datasets larger than memory); 'auto' streams when the
  # train and eval splits' pixels would take more than in_memory_limit_mb per host.
  config.input_mode = 'auto'
  config.in_memory_limit_mb = 4096
  config.shuffle_buffer = 10_000  # Streaming: examples shuffled at once, held encoded.

  # The model's registered name and its settings (models.registry).
  config.model = ml_collections.ConfigDict({'name': 'autoencoder'})
  # Loss terms beyond the model's own, by registered name, each with its settings
  # (convae_jax/losses): {'lpips': {'weight': 1.0, 'network': 'alexnet'}, 'adversarial': ...}.
  # A term's network (a discriminator) is trained with the optimizer settings below, like the
  # model; the EMA is of the model's weights only.
  config.losses = ml_collections.ConfigDict()

  config.optimizer = 'adam'  # A name in optimizer.OPTIMIZERS.
  config.learning_rate = 1e-3  # The peak, after any warm-up.
  # The learning rate against the step (SCHEDULES): 'constant', or a linear warm-up from 0
  # over warmup_steps (or warmup_fraction of the run, when positive) then a cosine or linear
  # decay to end_learning_rate at the last step, or an inverse square root decay.
  config.schedule = 'constant'
  config.warmup_steps = 0
  config.warmup_fraction = 0.0
  config.end_learning_rate = 0.0
  config.adam_b1 = 0.9  # adam and adamw.
  config.adam_b2 = 0.999
  config.adam_eps = 1e-8
  # adamw's decoupled weight decay (optax's default value), applied to kernels only, not to
  # biases, normalization scales or codebooks.
  config.weight_decay = 1e-4
  config.momentum = 0.0  # sgd.
  config.grad_clip_norm = 0.0  # Clip gradients to this global norm; 0 = off.
  # One update per this many steps, on their averaged gradients (optax.MultiSteps): a batch
  # this many times larger than fits. A step is still one batch (lengths, logs, checkpoints).
  config.accumulate_steps = 1
  # Evaluate (and by default infer with) an exponential moving average of the weights with
  # this decay, debiased as optax.ema does; 0 = off. Also evaluated: the raw weights
  # (eval_raw/...).
  config.ema_decay = 0.0
  # DTYPES: the activations' and convolutions' precision. Parameters, optimizer state,
  # losses, metrics, likelihoods and codebook distances stay float32 (docs/performance.md).
  config.dtype = 'float32'

  # Length: num_train_steps when positive, else num_epochs over the train split.
  config.batch_size = 128  # Global, over all devices of all processes.
  # Each device's batch in this many parts, averaged, which XLA:CPU runs on different cores
  # (docs/performance.md). 0 = auto (steps.micro_batches): on CPU up to 4 parts for a model
  # whose step they leave exact, 1 otherwise and on GPU/TPU.
  config.micro_batches = 0
  # CPU kernels put in for their plain Flax twins (convae_jax/cpu): 'auto' (all of them on a
  # CPU backend, none on GPU/TPU), 'none', or names of convae_jax.cpu.kernels.KERNELS. The
  # run records its resolved choice in config.json; evaluation and inference compute with it.
  config.kernels = 'auto'
  config.num_epochs = 20.0
  config.num_train_steps = -1

  config.eval_batch_size = 500
  # eval/lpips (LPIPS-AlexNet, convae_jax/perceptual.py) in every evaluation of images of 1 or
  # 3 channels; False leaves its cost out (large images, quick sweeps). `convae evaluate`
  # follows the run's choice.
  config.eval_lpips = True
  config.log_every_steps = 100
  config.eval_every_steps = 2000  # Also evaluated at the end.
  config.checkpoint_every_steps = 1000  # Also saved at the end.
  config.max_to_keep = 3
  config.num_grid_images = 32  # Test images shown beside their reconstructions.
  config.profile_num_steps = 0  # Steps traced into the workdir for TensorBoard; 0 = off.

  # A NaN/Inf loss or gradient: 'stop' the run (nothing non-finite is ever saved), or 'skip'
  # that step's update and go on (ON_NON_FINITE).
  config.on_non_finite = 'stop'
  # Skip updates whose gradient norm exceeds this (VDVAE's skip_threshold); 0 = off. Skipped
  # steps are counted (train/skipped_steps); more than max_consecutive_skips in a row stop
  # the run.
  config.skip_grad_norm_above = 0.0
  config.max_consecutive_skips = 100

  config.seed = 0
  # Start a new run from other weights (fresh optimizer state; the EMA, if on, from them):
  # 'pretrained:NAME' (convae pretrained lists them) or 'WORKDIR' or 'WORKDIR:STEP'. A run that
  # has checkpoints of its own resumes from them instead. '' = random initialization.
  config.init_from = ''
  return config


def completed(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """A saved config with any key it predates set to its default (a workdir of an earlier
  version: its run used what is now the default)."""
  full = defaults()
  full.update(config)
  return full
