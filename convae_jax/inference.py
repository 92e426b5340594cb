"""Use a trained model from Python: load it from its workdir, then reconstruct, encode, decode,
sample, interpolate or evaluate.

    from convae_jax import inference
    model = inference.load('/tmp/cae')              # newest checkpoint; step=N for another
                                                    # (EMA weights if trained with them)
    model = inference.load('pretrained:resae')      # weights shipped in the package
    recon = model.reconstruct(images)               # float [N, H, W, C] or [H, W, C] in [0, 1]
    z = model.encode(images); same = model.decode(z, size=images.shape[-3:-1])
    model.evaluate('test')                          # {'mse': ..., 'psnr': ..., 'ssim': ...}

The model is rebuilt from WORKDIR/config.json (the config the trainer resolved and saved) and
restored from WORKDIR/checkpoints/STEP; a pretrained one from its manifest and weights
(convae_jax/pretrained). Images of any size work: the models are fully
convolutional, and sides that do not divide by 2**num_downsamplings are padded (reflect, at
the bottom and right) and the outputs cropped back. Pixels are floats in [0, 1] (uint8 is
accepted too); they are mapped to and from the config's `input_range` here.
`reconstruct(x)` is exactly `decode(encode(x), size)`: the same compiled functions.
"""
import dataclasses
import glob
import functools
import json
import os
import re
from typing import Any, Sequence

import flax.jax_utils
import jax
import ml_collections
import numpy as np

from convae_jax import (checkpointing, config_checks, errors, evaluation, image_io, losses,
                        models, optimizer, paths, pixels, prior_config, steps, trainer_config)
from convae_jax.models import priors
from convae_jax import pretrained
from convae_jax.cpu import kernels as cpu_kernels


class UsageError(errors.UserError, ValueError):
  """A one-line problem with a workdir, checkpoint, setting or input, and how to fix it."""


def config_path(workdir: str, step: int) -> str:
  """The config that trained up to `step`: config.json, or the newest relaunch's before it."""
  resumed = []
  for path in glob.glob(os.path.join(workdir, 'config.resumed_at_step_*.json')):
    match = re.search(r'config\.resumed_at_step_(\d+)\.json$', path)
    if match and int(match.group(1)) < step:
      resumed.append((int(match.group(1)), path))
  return max(resumed)[1] if resumed else os.path.join(workdir, 'config.json')


def read_config(path: str) -> ml_collections.ConfigDict:
  if not os.path.exists(path):
    raise UsageError(f'{path} does not exist: the workdir holds no saved config (launch.py '
                     'writes config.json there); pass the --workdir of a training run')
  try:
    with open(path, encoding='utf-8') as f:
      return ml_collections.ConfigDict(json.load(f))
  except (OSError, ValueError) as e:
    raise UsageError(f'{path} cannot be read as a config ({type(e).__name__}: {e})') from None


def training_image_size(config: ml_collections.ConfigDict, factor: int) -> tuple[int, int]:
  """The training images' height and width (config.image_size, else TFDS metadata; 32x32
  when it does not say), rounded up to a multiple of `factor`: the default size of `sample`."""
  if config.get('image_size'):
    return (-(-config.image_size // factor) * factor,) * 2
  height = width = 32
  try:
    import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top  (TensorFlow)
    from convae_jax import datasets  # pylint: disable=g-import-not-at-top,unused-import
    shape = tfds.builder(config.dataset, data_dir=config.get('data_dir')).info.features[
        'image'].shape
    height, width = (d or default for d, default in zip(shape[:2], (32, 32)))
  except Exception:  # pylint: disable=broad-except  # Unknown or custom dataset: the defaults.
    pass
  return (-(-height // factor) * factor, -(-width // factor) * factor)


WEIGHTS = ('ema', 'raw')  # What `load(weights=...)` allows.


def load(workdir: str, step: int | None = None,
         weights: str = 'ema') -> 'TrainedModel | TrainedPrior':
  """The model trained in `workdir`, restored from checkpoint `step` (default: the newest);
  or, for 'pretrained:NAME', the shipped preset NAME (`convae_jax.pretrained`). The workdir of
  a prior over codes (configs/cifar_prior.py) gives a TrainedPrior, with its first stage.

  A run trained with config.ema_decay > 0 gives its EMA weights (what its eval/ metrics are
  of), or with weights='raw' the raw ones (eval_raw/); a run without EMA, its weights.
  """
  if weights not in WEIGHTS:
    raise UsageError(f'weights={weights!r}: must be one of {", ".join(WEIGHTS)}')
  name = pretrained.name_of(workdir)
  if name is not None:
    if step is not None:
      raise UsageError(f'{workdir} is one set of weights; drop --step')
    return load_pretrained(name)
  workdir = os.path.abspath(os.path.expanduser(workdir))
  step = _checkpoint_step(workdir, step)
  path = config_path(workdir, step)
  saved = read_config(path)
  if 'autoencoder' in saved:
    return _load_prior(workdir, step, path, saved, weights)
  config = trainer_config.completed(saved)
  if 'model' not in config:
    raise UsageError(f'{path} has no model config; pass the --workdir of a training run')
  try:
    model = models.create_model(config.model, config.dtype)
  except (ValueError, TypeError, AttributeError) as e:
    raise UsageError(f'{path}: config.model: {e} (a model or part of your own: import the '
                     'module that registers it first; the CLI takes --module NAME)') from None
  # At the training size: a learned prior's parameters are shaped by the latent grid.
  channels = model.image_channels
  try:
    objective = losses.Objective(config.losses)
  except ValueError as e:
    raise UsageError(f'{path}: {e} (a loss term of your own: import the module that '
                     'registers it first; the CLI takes --module NAME)') from None
  target = steps.abstract_train_state(
      model, optimizer.create_optimizer(config),
      (*training_image_size(config, 2**model.num_downsamplings), channels), config.ema_decay,
      objective)
  state = _restore(workdir, step, target, path, config.max_to_keep)
  used = 'ema' if weights == 'ema' and isinstance(state, steps.EmaTrainState) else 'raw'
  return TrainedModel(model=model, config=config,
                      state=steps.evaluated_weights(state, config.ema_decay, used), step=step,
                      workdir=workdir, channels=channels, weights=used)


def _checkpoint_step(workdir: str, step: int | None) -> int:
  """`step`, or the newest, once the workdir is found to hold that checkpoint."""
  if not os.path.isdir(workdir):
    raise UsageError(f'workdir {workdir} does not exist; pass the --workdir of a training run '
                     '(python launch.py --config ... --workdir DIR)')
  saved_steps = checkpointing.finished_steps(workdir)
  if not saved_steps:
    raise UsageError(f'{workdir} has no checkpoint in {os.path.join(workdir, "checkpoints")}; '
                     f'train first: python launch.py --config configs/cifar.py --workdir '
                     f'{workdir}')
  if step is None:
    return saved_steps[-1]
  if step not in saved_steps:
    raise UsageError(f'{workdir} has no checkpoint at step {step}; available steps: '
                     f'{", ".join(map(str, saved_steps))}')
  return step


def _restore(workdir: str, step: int, target, config_file: str, max_to_keep: int):
  """Checkpoint `step` of `workdir` restored into `target` (an abstract train state)."""
  checkpointer = checkpointing.Checkpointer(workdir, max_to_keep)
  try:
    return checkpointer.restore(target, step)
  except Exception as e:  # pylint: disable=broad-except  # Any failure means the same here.
    others = [s for s in checkpointing.finished_steps(workdir) if s != step]
    reason = (str(e).splitlines() or [''])[0].split('. ')[0][:200]
    raise UsageError(
        f'checkpoint {step} in {checkpointer.directory} cannot be restored into the model of '
        f'{config_file} ({type(e).__name__}: {reason})'
        + (f'; try --step with one of: {", ".join(map(str, others))}' if others else '')
    ) from None
  finally:
    checkpointer.close()


def load_pretrained(name: str) -> 'TrainedModel':
  """The shipped preset `name`: its manifest's config and its weights, checked against the
  model's parameter tree."""
  manifest = pretrained.manifest(name)
  config = trainer_config.completed(ml_collections.ConfigDict(manifest['config']))
  model = models.create_model(config.model, config.dtype)
  image_shape = tuple(manifest['image_shape'])
  target = steps.abstract_train_state(model, optimizer.create_optimizer(config), image_shape)
  variables = pretrained.weights(name)
  difference = steps.variables_difference(target, variables)
  if difference:
    raise pretrained.PretrainedError(f'pretrained {name!r}: its weights do not fit its model '
                                     f'({difference}); reinstall convae_jax')
  state = steps.TrainState(step=manifest['steps'], apply_fn=model.apply, tx=None, opt_state=None,
                           params=variables['params'], model_state=variables['model_state'])
  return TrainedModel(model=model, config=config, state=state, step=manifest['steps'],
                      workdir=pretrained.PREFIX + name, channels=image_shape[-1],
                      weights=manifest['weights'])


@dataclasses.dataclass(eq=False, repr=False)
class TrainedModel:
  """A restored model. Images are arrays [N, H, W, C] or [H, W, C], floats in [0, 1] or
  uint8; or a list of images of any sizes (arrays [H, W, C], or what image_io.load_images
  returns), each done at its own size, which gives a list back."""
  model: models.Autoencoder
  config: ml_collections.ConfigDict
  state: steps.TrainState  # Host copy: params, model_state (batch stats, ...), step.
  step: int
  workdir: str
  channels: int  # Of the images the model takes and gives.
  weights: str = 'raw'  # 'ema': the run's EMA weights are the params; 'raw': its own.

  def __post_init__(self):
    model = self.model
    self.variables = {'params': self.state.params, **self.state.model_state}
    # Keys for any random stream a model might touch outside training (fixed: reproducible).
    rngs = {name: jax.random.key(i) for i, name in enumerate(model.rng_streams)}
    # With the CPU kernels the run used (its config.json), so it computes as the run did.
    traced = functools.partial(cpu_kernels.tracing_with, self.config.kernels)
    self._encode = jax.jit(traced(lambda v, x: model.apply(v, x, method='latents', rngs=rngs)))
    self._decode = jax.jit(traced(
        lambda v, z: model.apply(v, z, False, method='decode', rngs=rngs)))
    self._sample = jax.jit(traced(
        lambda v, r, num, h, w: model.apply(v, num, h, w, method='sample', rngs=r)),
                           static_argnums=(2, 3, 4))
    self._interpolate = jax.jit(traced(
        lambda v, x, y, steps: model.apply(v, x, y, steps, method='interpolate', rngs=rngs)),
                                static_argnums=(3,))
    self._codes = jax.jit(traced(lambda v, x: model.apply(v, x, method='codes', rngs=rngs)))
    self._decode_codes = jax.jit(traced(
        lambda v, codes: model.apply(v, codes, method='decode_codes', rngs=rngs)))

  def __repr__(self) -> str:
    return (f'TrainedModel(model={self.name!r}, step={self.step}, weights={self.weights!r}, '
            f'workdir={self.workdir!r})')

  @property
  def name(self) -> str:
    """What the model is: its parts (seed+identity+mse), or a model's registered name."""
    return self.model.label or self.config.model.name

  @property
  def factor(self) -> int:
    """Image sides are padded to a multiple of this (2**num_downsamplings)."""
    return 2**self.model.num_downsamplings

  @property
  def input_range(self) -> tuple[float, float]:
    return tuple(self.config.input_range)

  @property
  def can_sample(self) -> bool:
    return self.model.can_sample

  # Pixels in and out.

  def _as_images(self, images) -> tuple[np.ndarray, bool]:
    """float32 [N, H, W, C] in [0, 1], and whether a single image [H, W, C] was given."""
    if isinstance(images, image_io.LoadedImage):
      images = images.pixels
    try:
      array = np.asarray(images)
    except ValueError:  # A ragged nesting of arrays.
      array = np.asarray(images, dtype=object)
    if array.dtype == object:
      raise UsageError(f'images of different sizes in one array; pass a list of images '
                       f'[H, W, {self.channels}] instead, each is done at its own size')
    if array.dtype == np.uint8:
      array = array.astype(np.float32) / 255.0
    elif not np.issubdtype(array.dtype, np.floating):
      raise UsageError(f'images of dtype {array.dtype}: pass floats in [0, 1] or uint8')
    single = array.ndim == 3
    if single:
      array = array[None]
    if array.ndim != 4 or array.shape[-1] != self.channels:
      raise UsageError(f'images of shape {np.shape(images)}: pass [N, H, W, {self.channels}] '
                       f'or [H, W, {self.channels}] (model {self.name!r} takes '
                       f'{self.channels} channels)')
    if array.size == 0:
      raise UsageError(f'images of shape {np.shape(images)} hold no pixels')
    if not np.all(np.isfinite(array)) or array.min() < -1e-6 or array.max() > 1 + 1e-6:
      raise UsageError(f'image values must be finite and in [0, 1] (got {np.nanmin(array)} to '
                       f'{np.nanmax(array)}); divide 8-bit pixels by 255')
    return array.astype(np.float32), single

  def _to_model(self, images: np.ndarray) -> np.ndarray:
    """[0, 1] images, padded (reflect) so H and W divide by `factor`, in the input range."""
    h, w = images.shape[1:3]
    pad_h, pad_w = -h % self.factor, -w % self.factor
    if pad_h or pad_w:
      images = np.pad(images, ((0, 0), (0, pad_h), (0, pad_w), (0, 0)), mode='reflect')
    return pixels.from_unit_range(images, self.input_range).astype(np.float32)

  def _to_unit(self, outputs, size: tuple[int, int] | None = None) -> np.ndarray:
    images = np.clip(pixels.to_unit_range(np.asarray(outputs, np.float32), self.input_range),
                     0.0, 1.0)
    return images if size is None else images[:, :size[0], :size[1]]

  @staticmethod
  def _chunks(n: int, batch_size: int):
    return [slice(i, min(n, i + batch_size)) for i in range(0, n, max(1, batch_size))]

  # The API.

  def reconstruct(self, images, batch_size: int = 32) -> np.ndarray | list[np.ndarray]:
    """Reconstructions of `images` at their own size, floats in [0, 1]."""
    if isinstance(images, (list, tuple)):
      return [self.reconstruct(image, batch_size) for image in _single_images(images)]
    array, single = self._as_images(images)
    size = array.shape[1:3]
    padded = self._to_model(array)
    out = np.concatenate([
        self._to_unit(self._decode(self.variables, self._encode(self.variables, padded[s])),
                      size) for s in self._chunks(len(padded), batch_size)])
    return out[0] if single else out

  def encode(self, images, batch_size: int = 32) -> np.ndarray | list[np.ndarray]:
    """Latents [N, H', W', C'] (or [H', W', C']) of the padded images; decode with `size`."""
    if isinstance(images, (list, tuple)):
      return [self.encode(image, batch_size) for image in _single_images(images)]
    array, single = self._as_images(images)
    padded = self._to_model(array)
    out = np.concatenate([np.asarray(self._encode(self.variables, padded[s]))
                          for s in self._chunks(len(padded), batch_size)])
    return out[0] if single else out

  def decode(self, latents, size: Sequence[int] | None = None,
             batch_size: int = 32) -> np.ndarray:
    """Images in [0, 1] from latents; `size` (H, W) crops them to the encoded images' size."""
    array = np.asarray(latents, np.float32)
    single = array.ndim == 3
    if single:
      array = array[None]
    expected = self.latent_channels
    if array.ndim != 4 or array.shape[-1] != expected:
      raise UsageError(f'latents of shape {np.shape(latents)}: model {self.name!r} decodes '
                       f'[N, H\', W\', {expected}] or [H\', W\', {expected}]')
    if size is not None:
      size = tuple(int(s) for s in size)
      full = (array.shape[1] * self.factor, array.shape[2] * self.factor)
      if not (0 < size[0] <= full[0] and 0 < size[1] <= full[1]) or (
          full[0] - size[0] >= self.factor or full[1] - size[1] >= self.factor):
        raise UsageError(f'size {size[0]}x{size[1]} does not match latents of '
                         f'{array.shape[1]}x{array.shape[2]}, which decode to '
                         f'{full[0]}x{full[1]} images')
    out = np.concatenate([self._to_unit(self._decode(self.variables, array[s]), size)
                          for s in self._chunks(len(array), batch_size)])
    return out[0] if single else out

  @property
  def latent_channels(self) -> int:
    probe = np.zeros((1, self.factor, self.factor, self.channels), np.float32)
    return jax.eval_shape(self._encode, self.variables, probe).shape[-1]

  @property
  def code_grid(self) -> tuple[int, int]:
    """The code grid (h, w) of the training images: what a prior over its codes models."""
    height, width = training_image_size(self.config, self.factor)
    return height // self.factor, width // self.factor

  def require_codes(self, what: str) -> None:
    """Raises UsageError (one line) unless the model has discrete codes (vq, fsq)."""
    if not self.model.num_codes:
      raise UsageError(f'{what}: model {self.name!r} ({self.workdir}) has no discrete codes: '
                       'a prior over codes needs a first stage with a vq or fsq bottleneck, '
                       'e.g. pretrained:vqvae-resnet or a run of configs/cifar.py:vqvae-resnet')

  def codes(self, images, batch_size: int = 250) -> np.ndarray:
    """The code index at each latent position of `images` [N, H, W, C] (uint8, or floats
    in [0, 1]) whose sides divide by `factor`: int32 [N, H / factor, W / factor]."""
    self.require_codes('codes')
    images = np.asarray(images)
    if images.ndim != 4 or images.shape[1] % self.factor or images.shape[2] % self.factor:
      raise UsageError(f'codes: images of shape {images.shape}: pass [N, H, W, '
                       f'{self.channels}] with H and W multiples of {self.factor}')
    return np.concatenate([
        np.asarray(self._codes(self.variables, self._to_model(self._as_images(images[s])[0])),
                   np.int32) for s in self._chunks(len(images), batch_size)])

  def decode_codes(self, codes, batch_size: int = 250) -> np.ndarray:
    """Images [N, H, W, C] in [0, 1] decoded from code indices [N, h, w]."""
    self.require_codes('decode_codes')
    codes = np.asarray(codes)
    if (codes.ndim != 3 or not np.issubdtype(codes.dtype, np.integer) or
        codes.min() < 0 or codes.max() >= self.model.num_codes):
      raise UsageError(f'decode_codes: codes of shape {codes.shape} and dtype {codes.dtype}: '
                       f'pass integers [N, h, w] in [0, {self.model.num_codes})')
    return np.concatenate([
        self._to_unit(self._decode_codes(self.variables, codes[s].astype(np.int32)))
        for s in self._chunks(len(codes), batch_size)])

  def require_can_sample(self, what: str = 'sample') -> None:
    """Raises UsageError (one line) unless the model declares `can_sample`."""
    if not self.can_sample:
      raise UsageError(f'model {self.name!r} cannot {what}: it has no prior to sample '
                       '(can_sample is False); train a model whose bottleneck has one, e.g. '
                       '--config configs/cifar.py:vae')

  def sample(self, num: int, seed: int = 0, height: int | None = None,
             width: int | None = None) -> np.ndarray:
    """`num` images [num, H, W, C] in [0, 1] drawn from the prior (the training size unless
    `height`/`width` are given; they must divide by `factor`)."""
    self.require_can_sample('sample')
    default = training_image_size(self.config, self.factor)
    height, width = height or default[0], width or default[1]
    if self.model.samples_at_training_size and (height, width) != default:
      raise UsageError(f"sample: this model's prior was learned on the latent grid of "
                       f'{default[0]}x{default[1]} images; sample at that size (leave out '
                       '--height and --width)')
    if num < 1 or height % self.factor or width % self.factor:
      raise UsageError(f'sample: num={num} must be >= 1 and the size {height}x{width} must '
                       f'divide by {self.factor}')
    key = jax.random.key(seed)
    rngs = {name: jax.random.fold_in(key, i) for i, name in enumerate(self.model.rng_streams)}
    return self._to_unit(self._sample(self.variables, rngs, num, height, width))

  def interpolate(self, start, end, steps: int = 8) -> np.ndarray:
    """`steps` images from `start` to `end` (same size): [steps, H, W, C], or
    [N, steps, H, W, C] for batches of N pairs; floats in [0, 1]."""
    self.require_can_sample('interpolate')
    a, single = self._as_images(start)
    b, _ = self._as_images(end)
    if a.shape != b.shape:
      raise UsageError(f'interpolate needs images of the same size; got {a.shape[1]}x'
                       f'{a.shape[2]} and {b.shape[1]}x{b.shape[2]}')
    if steps < 2:
      raise UsageError(f'interpolate: steps={steps} must be >= 2')
    out = self._interpolate(self.variables, self._to_model(a), self._to_model(b), steps)
    out = self._to_unit(out, a.shape[1:3]).reshape((len(a), steps) + a.shape[1:])
    return out[0] if single else out

  def evaluate(self, split: str | None = None, *, dataset: str | None = None,
               data_dir: str | None = None, batch_size: int | None = None,
               importance_samples: int = 0) -> dict[str, Any]:
    """The trainer's evaluation (every image once; mse, psnr, ssim and the model's own
    metrics) of a TFDS split, by default the config's eval split. Returns the metrics and
    'num_images'. With `importance_samples` K > 0 (a model with importance weights: the VAE),
    also 'bpd_iw': the importance-weighted bound with K posterior draws per image, beside the
    one-draw negative ELBO 'bpd'."""
    from convae_jax import input_pipeline  # pylint: disable=g-import-not-at-top  (TensorFlow)
    try:
      input_pipeline.hide_accelerators_from_tensorflow()
    except RuntimeError:  # TensorFlow already started in this process: leave it.
      pass
    dataset = dataset or self.config.dataset
    split = split or self.config.eval_split
    data_dir = data_dir if data_dir is not None else self.config.get('data_dir')
    config_checks.check_dataset(dataset, 'dataset')
    if data_dir is not None:
      paths.check_dir(data_dir, 'data_dir', writable=False)
    if batch_size is not None and batch_size < 1:
      raise UsageError(f'batch_size={batch_size}: must be 1 or more')
    if importance_samples < 0:
      raise UsageError(f'importance_samples={importance_samples}: must be 0 (off) or more')
    if importance_samples and not self.model.has_importance_weights:
      raise UsageError(f'importance_samples: model {self.name!r} has no prior and likelihood '
                       'to weight (the vae presets do); leave it at 0')
    # Resized and cropped as in training, when the run set config.image_size.
    data = input_pipeline.load_split(dataset, split, data_dir, self.config.get('image_size'))
    image_shape = data.images.shape[1:]
    if image_shape[0] % self.factor or image_shape[1] % self.factor:
      raise UsageError(f'{dataset}:{split} images of {image_shape[0]}x{image_shape[1]} do not '
                       f'divide by {self.factor}; reconstruct them as files instead')
    if image_shape[-1] != self.channels:
      raise UsageError(f'{dataset}:{split} images have {image_shape[-1]} channels; model '
                       f'{self.name!r} takes {self.channels}')
    devices = jax.local_devices()
    batch = batch_size or self.config.eval_batch_size
    batch = -(-batch // len(devices)) * len(devices)
    p_eval_step = steps.make_eval_step(self.model, self.input_range, image_shape,
                                       self.config.kernels, self.config.eval_lpips)
    state = flax.jax_utils.replicate(self.state.replace(opt_state=None), devices)
    # The trainer's evaluation key, so a stochastic model scores as in training.
    base_rng = jax.random.split(jax.random.key(self.config.seed))[1]
    batches = lambda: input_pipeline.eval_batches(
        data, global_batch_size=batch, num_local_devices=len(devices),
        process_index=jax.process_index(), process_count=jax.process_count())
    scalars, _ = evaluation.evaluate(p_eval_step, state, batches(), devices, base_rng)
    if importance_samples:
      scalars['bpd_iw'] = evaluation.importance_weighted_bpd(
          self.model, state, batches(), devices, base_rng, self.input_range, importance_samples,
          self.config.kernels)
      scalars['importance_samples'] = importance_samples
    return {**scalars, 'num_images': data.num_examples}


def _load_prior(workdir: str, step: int, path: str, saved: ml_collections.ConfigDict,
                weights: str) -> 'TrainedPrior':
  """The prior trained in `workdir` (its config `saved`, at `path`) and its first stage."""
  config = prior_config.defaults()
  config.update(saved)
  first_stage = load(config.autoencoder)
  if not isinstance(first_stage, TrainedModel):
    raise UsageError(f'{path}: config.autoencoder={config.autoencoder!r} is itself a prior; '
                     'a prior models the codes of an autoencoder')
  first_stage.require_codes(f'{path}: config.autoencoder')
  try:
    prior = priors.create_prior(config.model, first_stage.model.num_codes,
                                first_stage.code_grid, config.dtype)
  except (ValueError, TypeError, AttributeError) as e:
    raise UsageError(f'{path}: config.model: {e} (a prior of your own: import the module '
                     'that registers it first; the CLI takes --module NAME)') from None
  target = steps.abstract_train_state(prior, optimizer.create_optimizer(config),
                                      first_stage.code_grid, config.ema_decay)
  state = _restore(workdir, step, target, path, config.max_to_keep)
  used = 'ema' if weights == 'ema' and isinstance(state, steps.EmaTrainState) else 'raw'
  return TrainedPrior(prior=prior, config=config,
                      state=steps.evaluated_weights(state, config.ema_decay, used), step=step,
                      workdir=workdir, first_stage=first_stage, weights=used)


@dataclasses.dataclass(eq=False, repr=False)
class TrainedPrior:
  """A restored prior over the codes of `first_stage`, which decodes its samples."""
  prior: priors.CodePrior
  config: ml_collections.ConfigDict
  state: steps.TrainState
  step: int
  workdir: str
  first_stage: TrainedModel
  weights: str = 'raw'

  def __post_init__(self):
    self.variables = {'params': self.state.params, **self.state.model_state}
    self._sample = jax.jit(functools.partial(priors.sample, self.prior),
                           static_argnums=(2, 3, 4))
    self._nll = jax.jit(lambda v, codes: self.prior.apply(v, codes).losses['nll'])

  def __repr__(self) -> str:
    return (f'TrainedPrior(model={self.config.model.name!r}, step={self.step}, '
            f'weights={self.weights!r}, workdir={self.workdir!r}, '
            f'first_stage={self.first_stage.workdir!r})')

  def sample_codes(self, num: int, temperature: float = 1.0, top_k: int = 0,
                   seed: int = 0) -> np.ndarray:
    """`num` code grids [num, h, w] drawn in raster order at `temperature`, each code from
    the `top_k` likeliest (0: all)."""
    if num < 1:
      raise UsageError(f'sample: num={num} must be >= 1')
    if not temperature > 0:
      raise UsageError(f'sample: temperature={temperature} must be positive')
    if not 0 <= top_k <= self.prior.num_codes:
      raise UsageError(f'sample: top_k={top_k} must lie in [0, {self.prior.num_codes}] '
                       '(0: all codes)')
    return np.asarray(self._sample(self.variables, jax.random.key(seed), num,
                                   float(temperature), int(top_k)))

  def sample(self, num: int, temperature: float = 1.0, top_k: int = 0,
             seed: int = 0) -> np.ndarray:
    """`num` images [num, H, W, C] in [0, 1]: sampled codes decoded by the first stage."""
    return self.first_stage.decode_codes(self.sample_codes(num, temperature, top_k, seed))

  def nll_bits(self, codes) -> np.ndarray:
    """The prior's negative log-likelihood of code grids [N, h, w], bits per code [N]."""
    codes = np.asarray(codes)
    if codes.shape[1:] != tuple(self.prior.grid):
      raise UsageError(f'nll_bits: codes of shape {codes.shape}; the prior models grids of '
                       f'{self.prior.grid[0]}x{self.prior.grid[1]}')
    return np.asarray(self._nll(self.variables, codes.astype(np.int32))) / np.log(2.0)


def _single_images(images: Sequence[Any]) -> list[Any]:
  """The items of a list of images, each checked to be one image [H, W, C]."""
  items = [image.pixels if isinstance(image, image_io.LoadedImage) else image for image in images]
  for i, item in enumerate(items):
    if np.ndim(item) != 3:
      raise UsageError(f'images[{i}] has shape {np.shape(item)}: a list holds single images '
                       '[H, W, C] (or image_io.LoadedImage); pass a batch as one array instead')
  return items
