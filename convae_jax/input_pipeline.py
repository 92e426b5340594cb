"""TFDS -> host memory -> device batches: preparing a dataset, and the in-memory input mode.

In this mode (for small datasets: CIFAR-10 is 150 MB of uint8) each split is decoded once
into host memory; streaming.py reads datasets larger than memory. Batches stay uint8; the train and eval steps normalize them on the device.
Training order is a function of (seed, step) alone: each epoch is a stateless shuffle of the
indices keyed by (seed, epoch), so a run resumed at step N reads exactly the batches an
unstopped run would, without replaying the stream.

With several processes, each one holds the split and walks the same global order, but
gathers and feeds to its devices only its own rows of each global batch (and of each eval
batch). So the global batches are the same for any number of processes: a run
resumes on another number of processes and reaches the same parameters.
"""
import contextlib
import dataclasses
import io
import os
import socket
import urllib.parse
from typing import Iterator

import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds
from absl import logging

from convae_jax import datasets  # noqa: F401  (registers the embedded datasets)
from convae_jax import errors
from convae_jax.datasets import import_cifar10

# Datasets built from files that ship with an installed package: preparing them needs no network.
EMBEDDED_DATASETS = ('photo_patches',)
PREFETCH_BATCHES = 4  # Batches tf.data prepares ahead of the step (streaming.py).


class DatasetUnavailableError(errors.UserError):
  """The dataset is not in data_dir and cannot be downloaded."""


class SplitError(errors.UserError):
  """A split the dataset does not have, or one that holds no examples."""


class ImageSizeError(errors.UserError):
  """Images of varied sizes, and no config.image_size to make them one."""


@dataclasses.dataclass(frozen=True)
class Split:
  """One split decoded into host memory: uint8 images [N, H, W, C] (or a prior's code grids
  [N, h, w]: the batching below reads rows of any shape)."""
  images: np.ndarray

  @property
  def num_examples(self) -> int:
    return len(self.images)


def _unreachable_hosts(builder: tfds.core.DatasetBuilder) -> list[str]:
  """Hosts of the builder's download URLs that do not resolve (no network)."""
  hosts = {urllib.parse.urlparse(url).hostname for url in (builder.url_infos or {})}
  unreachable = []
  for host in sorted(h for h in hosts if h):
    try:
      socket.getaddrinfo(host, 443)
    except OSError:
      unreachable.append(host)
  return unreachable


def _prepare(builder: tfds.core.DatasetBuilder) -> None:
  """Makes sure the prepared dataset exists, failing in a line or two when it cannot."""
  data_root = os.path.dirname(os.path.dirname(builder.data_dir))  # Drop NAME/VERSION.
  if builder.name in EMBEDDED_DATASETS:
    logging.info('Building the offline dataset %s into %s (once; set --config.data_dir to '
                 'build it elsewhere)', builder.name, data_root)
    with contextlib.redirect_stdout(io.StringIO()):  # TFDS prints "Downloading ... Unknown size".
      builder.download_and_prepare()
    return
  help_text = (import_cifar10.MISSING_CIFAR10_HELP.format(data_dir=data_root)
               if builder.name == 'cifar10' else
               f'dataset {builder.name!r} is not prepared in {data_root} and could not be '
               'downloaded; prepare it with `tfds build` and pass --config.data_dir.')
  # Offline, TFDS retries a failing download for minutes; a DNS check answers at once.
  # (Under tfds.testing.mock_data, download_and_prepare is a no-op and is_prepared is False.)
  if not _is_mocked(builder) and _unreachable_hosts(builder):
    raise DatasetUnavailableError(help_text)
  try:
    builder.download_and_prepare(
        download_config=tfds.download.DownloadConfig(try_download_gcs=False))
  except Exception as e:  # pylint: disable=broad-except  # Any download failure means the same.
    raise DatasetUnavailableError(f'{help_text} ({type(e).__name__}: {e})') from e


def prepared_builder(dataset: str, data_dir: str | None) -> tfds.core.DatasetBuilder:
  """The dataset's TFDS builder, prepared first if it is not (DatasetUnavailableError if it
  cannot be)."""
  builder = tfds.builder(dataset, data_dir=data_dir)
  if not builder.is_prepared():
    _prepare(builder)
  return builder


def _is_mocked(builder: tfds.core.DatasetBuilder) -> bool:
  return type(builder).download_and_prepare.__name__ == 'mock_download_and_prepare'


@dataclasses.dataclass(frozen=True)
class DatasetInfo:
  """What TFDS's metadata says of a prepared dataset, before any image is read.

  `image_shape` is (H, W, C) as the model sees the images (after config.image_size).
  A split's size is None where the metadata does not say (tfds.testing.mock_data).
  """
  image_shape: tuple[int, int, int]
  num_examples: dict[str, int | None]

  @property
  def channels(self) -> int:
    return self.image_shape[-1]


def _split_size(builder: tfds.core.DatasetBuilder, split: str, what: str) -> int | None:
  """Examples in `split` (TFDS slicing such as train[:90%] included); None if unknown."""
  splits = builder.info.splits
  if not splits:
    return None
  try:
    size = splits[split].num_examples
  except (KeyError, ValueError) as e:
    reason = errors.one_line(e).split(' See format')[0].split(' Should be one of')[0]
    reason = reason.rstrip('.').replace("'", '').strip('"')
    raise SplitError(f'{what}={split!r}: {reason}; dataset {builder.name!r} has splits '
                     f'{", ".join(sorted(splits.keys()))} (slices such as '
                     f'{sorted(splits.keys())[0]}[:10%] work too)') from None
  if not size:
    raise SplitError(f'{what}={split!r} of dataset {builder.name!r} holds no examples; choose '
                     f'another split or a larger slice')
  return size


def describe(dataset: str, data_dir: str | None, splits: dict[str, str],
             image_size: int | None = None) -> DatasetInfo:
  """Prepares `dataset` if needed and checks `splits` ({setting name: split}); reads no images.

  Raises DatasetUnavailableError when the dataset cannot be had, SplitError for a split it
  does not have or that is empty, ImageSizeError for images of varied sizes without
  `image_size`.
  """
  builder = prepared_builder(dataset, data_dir)
  num_examples = {split: _split_size(builder, split, what) for what, split in splits.items()}
  height, width, channels = builder.info.features['image'].shape
  if image_size is not None:
    height = width = image_size
  elif height is None or width is None:
    raise ImageSizeError(f'dataset {dataset!r} has images of varied sizes; set '
                         '--config.image_size=N to resize and centre-crop them to NxN')
  return DatasetInfo(image_shape=(height, width, channels), num_examples=num_examples)


def resized_and_cropped(image: tf.Tensor, size: int) -> tf.Tensor:
  """uint8 [H, W, C] -> uint8 [size, size, C]: the shorter side resized to `size`
  (antialiased, so downscaling does not alias), then the centre square cropped."""
  height, width = tf.shape(image)[0], tf.shape(image)[1]
  scale = size / tf.cast(tf.minimum(height, width), tf.float32)
  new_height = tf.maximum(size, tf.cast(tf.round(tf.cast(height, tf.float32) * scale), tf.int32))
  new_width = tf.maximum(size, tf.cast(tf.round(tf.cast(width, tf.float32) * scale), tf.int32))
  resized = tf.image.resize(image, (new_height, new_width), antialias=True)
  top, left = (new_height - size) // 2, (new_width - size) // 2
  cropped = resized[top:top + size, left:left + size]
  return tf.cast(tf.clip_by_value(tf.round(cropped), 0, 255), tf.uint8)


def as_model_shape(image_size: int | None):
  """The per-image map from a decoded TFDS image to the model's shape (see describe)."""
  if image_size is None:
    return lambda image: image
  return lambda image: resized_and_cropped(image, image_size)


def load_split(dataset: str, split: str, data_dir: str | None,
               image_size: int | None = None) -> Split:
  """Reads a whole TFDS split into memory as uint8 images (preparing the dataset if needed),
  resized and cropped to `image_size` when given.

  Every process of a multi-process run reads the whole split: it is small, and the global
  order of the examples (hence each process's rows) then does not depend on how many
  processes there are.
  """
  builder = prepared_builder(dataset, data_dir)
  _split_size(builder, split, 'split')
  ds = builder.as_dataset(split=split, shuffle_files=False)
  ds = ds.map(lambda example: as_model_shape(image_size)(example['image']))
  chunks = list(tfds.as_numpy(ds.batch(10_000).with_options(untuned_options()).prefetch(1)))
  if not chunks:
    raise SplitError(f'split {split!r} of dataset {dataset!r} is empty; '
                     'choose another split with --config.train_split / --config.eval_split')
  return Split(images=np.concatenate(chunks))


def untuned_options() -> tf.data.Options:
  """No autotuning: its model thread sleeps between rounds (the rounds grow to a minute
  apart), and an iterator's destructor waits for it, so runs sat idle at exit. Reading and
  gathering uint8 rows needs no tuning: one thread and a few batches ahead keep up."""
  options = tf.data.Options()
  options.autotune.enabled = False
  return options


def epoch_order(num_examples: int, seed: int, epoch: int) -> np.ndarray:
  """The training order of one epoch: a stateless shuffle of the indices keyed by (seed, epoch)."""
  return tf.random.experimental.stateless_shuffle(
      tf.range(num_examples, dtype=tf.int64),
      seed=tf.constant([seed, epoch], dtype=tf.int64)).numpy()


def train_batches(split: Split, *, global_batch_size: int, seed: int, start_step: int,
                  num_local_devices: int, process_index: int = 0,
                  process_count: int = 1) -> Iterator[np.ndarray]:
  """Endless uint8 batches [local devices, per-device batch, H, W, C], from `start_step`.

  The global order is the epochs' orders (`epoch_order`) one after another, cut into global
  batches (a batch may span two epochs). The pixels stay uint8 until the train step
  normalizes them on the device (fused into the first layer there): a quarter of the bytes
  for the host to copy to the device. Each batch is one numpy gather on the calling thread,
  with no tf.data runtime beside the step, which shares the CPU cores with the host
  (docs/performance.md).
  Every process walks the same global index stream and gathers its own slice of each
  global batch, so the global batch is the same whatever the number of processes.
  """
  local_batch = global_batch_size // process_count
  per_device = local_batch // num_local_devices
  mine = slice(process_index * local_batch, (process_index + 1) * local_batch)
  epoch, offset = divmod(start_step * global_batch_size, split.num_examples)
  order = epoch_order(split.num_examples, seed, epoch)[offset:]
  while True:
    while len(order) < global_batch_size:
      epoch += 1
      order = np.concatenate([order, epoch_order(split.num_examples, seed, epoch)])
    indices, order = order[:global_batch_size], order[global_batch_size:]
    yield split.images[indices[mine]].reshape(
        (num_local_devices, per_device) + split.images.shape[1:])


def eval_batches(split: Split, *, global_batch_size: int, num_local_devices: int,
                 process_index: int = 0,
                 process_count: int = 1) -> Iterator[tuple[np.ndarray, np.ndarray]]:
  """The whole split exactly once: (images, mask) with the last batch padded, mask=False there.

  Shapes [local devices, per-device batch, H, W, C] (uint8, as train_batches) and
  [local devices, per-device batch].
  """
  local_batch = global_batch_size // process_count
  per_device = local_batch // num_local_devices
  num_examples = split.num_examples
  for start in range(0, num_examples, global_batch_size):
    indices = np.arange(start, start + global_batch_size)
    indices = indices[process_index * local_batch:(process_index + 1) * local_batch]
    mask = indices < num_examples
    images = split.images[np.where(mask, indices, 0)]
    yield (images.reshape((num_local_devices, per_device) + images.shape[1:]),
           mask.reshape(num_local_devices, per_device))


def num_eval_batches(split: Split, global_batch_size: int) -> int:
  return -(-split.num_examples // global_batch_size)


def hide_accelerators_from_tensorflow() -> None:
  """TF only feeds data here: keep it off the GPUs/TPUs so JAX gets all their memory."""
  tf.config.set_visible_devices([], 'GPU')


tfds.disable_progress_bar()  # Progress bars of a dataset build flood the log.
