"""The streaming input mode: datasets larger than memory, each process reading only its share.

Each process reads its own share of a split (tfds.even_splits: a contiguous range of the
split's records, hence of its files), never the whole split. An epoch of a share reads its
files in an order keyed by (seed, epoch), a few at a time, through a shuffle buffer keyed the
same way, and decodes the records in parallel, in a fixed order.

Resume is exact by a deterministic skip rather than a saved iterator: epoch e's record stream
is a function of (seed, e, the process's share) alone, so a run resumed at step N rebuilds
its epoch's stream and skips the records already trained on. The skip happens before
decoding, so it costs reading (not decoding) at most one epoch of the process's share, and
nothing about the input has to be saved beside the checkpoint. A run resumed on another
number of processes gets other shares, hence another order (in-memory mode does not).
"""
import os
from typing import Iterator

import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds

from convae_jax import errors, input_pipeline

FILES_READ_AT_ONCE = 16  # Interleaved files of a share; also the shuffle's reach across files.
DECODE_THREADS = max(1, min(8, os.cpu_count() or 1))


class StreamingError(errors.UserError):
  """A dataset this mode cannot stream."""


def share(split: str, process_index: int, process_count: int):
  """This process's part of `split`: the processes' parts are disjoint and cover it."""
  return tfds.even_splits(split, n=process_count, drop_remainder=False)[process_index]


def share_sizes(builder: tfds.core.DatasetBuilder, split: str, process_count: int) -> list[int]:
  """Examples in each process's share of `split`."""
  return [builder.info.splits[share(split, i, process_count)].num_examples
          for i in range(process_count)]


def _builder(dataset: str, data_dir: str | None) -> tfds.core.DatasetBuilder:
  builder = input_pipeline.prepared_builder(dataset, data_dir)
  if builder.info.file_format != tfds.core.FileFormat.TFRECORD:
    raise StreamingError(
        f'dataset {dataset!r} is stored as {builder.info.file_format.value}, and streaming '
        'reads TFRecord files; set --config.input_mode=in_memory')
  if not builder.info.splits:
    raise StreamingError(f'dataset {dataset!r} has no split metadata (file list), which '
                         'streaming reads; set --config.input_mode=in_memory')
  return builder


def _records(builder: tfds.core.DatasetBuilder, split, file_order_key=None) -> tf.data.Dataset:
  """The serialized examples of `split`, its files in order, or in an order keyed by
  `file_order_key` (an int64 [2] tensor)."""
  instructions = builder.info.splits[split].file_instructions
  names = tf.constant([i.filename for i in instructions])
  skips = tf.constant([i.skip for i in instructions], tf.int64)
  takes = tf.constant([i.take for i in instructions], tf.int64)
  order = tf.range(len(instructions), dtype=tf.int64)
  if file_order_key is not None:
    order = tf.random.experimental.stateless_shuffle(order, seed=file_order_key)
  files = tf.data.Dataset.from_tensor_slices(order).map(
      lambda i: (tf.gather(names, i), tf.gather(skips, i), tf.gather(takes, i)))
  return files.interleave(
      lambda name, skip, take: tf.data.TFRecordDataset(name).skip(skip).take(take),
      cycle_length=min(len(instructions), FILES_READ_AT_ONCE), block_length=1,
      num_parallel_calls=min(len(instructions), FILES_READ_AT_ONCE), deterministic=True)


def _decoder(builder: tfds.core.DatasetBuilder, image_size: int | None):
  features, to_model_shape = builder.info.features, input_pipeline.as_model_shape(image_size)
  return lambda record: to_model_shape(features.deserialize_example(record)['image'])


def _options(threads: int) -> tf.data.Options:
  options = input_pipeline.untuned_options()
  options.threading.private_threadpool_size = threads
  return options


def train_batches(dataset: str, split: str, data_dir: str | None, *, image_size: int | None,
                  shuffle_buffer: int, global_batch_size: int, seed: int, start_step: int,
                  num_local_devices: int, process_index: int = 0,
                  process_count: int = 1) -> Iterator[np.ndarray]:
  """Endless uint8 batches [local devices, per-device batch, H, W, C] of this process's
  share, from `start_step` (as input_pipeline.train_batches, but for its share only)."""
  builder = _builder(dataset, data_dir)
  mine = share(split, process_index, process_count)
  num_examples = builder.info.splits[mine].num_examples
  local_batch = global_batch_size // process_count
  per_device = local_batch // num_local_devices
  first_epoch, offset = divmod(start_step * local_batch, num_examples)

  def epoch_records(epoch):
    key = tf.stack([tf.cast(seed, tf.int64), epoch])
    return _records(builder, mine, key).shuffle(
        shuffle_buffer, seed=tf.cast(seed, tf.int64) * 1_000_003 + epoch,
        reshuffle_each_iteration=False)

  ds = tf.data.Dataset.range(first_epoch, np.iinfo(np.int64).max).flat_map(epoch_records)
  ds = ds.skip(offset)  # Before decoding: skipped records are read, not decoded.
  ds = ds.map(_decoder(builder, image_size), num_parallel_calls=DECODE_THREADS,
              deterministic=True)
  ds = ds.batch(local_batch, drop_remainder=True)
  ds = ds.map(lambda images: tf.reshape(
      images, tf.concat([[num_local_devices, per_device], tf.shape(images)[1:]], 0)))
  ds = ds.with_options(_options(DECODE_THREADS)).prefetch(input_pipeline.PREFETCH_BATCHES)
  return ds.as_numpy_iterator()


def eval_batches(dataset: str, split: str, data_dir: str | None, *, image_size: int | None,
                 image_shape: tuple[int, int, int], global_batch_size: int,
                 num_local_devices: int, process_index: int = 0,
                 process_count: int = 1) -> Iterator[tuple[np.ndarray, np.ndarray]]:
  """This process's share of the split exactly once, as (images, mask) of the shapes of
  input_pipeline.eval_batches. Every process yields the same number of batches (its last
  ones padded, mask=False there), so the eval step's collectives line up."""
  builder = _builder(dataset, data_dir)
  local_batch = global_batch_size // process_count
  per_device = local_batch // num_local_devices
  num_batches = -(-max(share_sizes(builder, split, process_count)) // local_batch)
  ds = _records(builder, share(split, process_index, process_count)).map(
      _decoder(builder, image_size), num_parallel_calls=DECODE_THREADS, deterministic=True)
  ds = ds.batch(local_batch).with_options(_options(DECODE_THREADS)).prefetch(2)
  batches = ds.as_numpy_iterator()
  for _ in range(num_batches):
    images = next(batches, np.zeros((0,) + tuple(image_shape), np.uint8))
    mask = np.arange(local_batch) < len(images)
    padded = np.zeros((local_batch,) + images.shape[1:], np.uint8)
    padded[:len(images)] = images
    yield (padded.reshape((num_local_devices, per_device) + padded.shape[1:]),
           mask.reshape(num_local_devices, per_device))


def first_images(dataset: str, split: str, data_dir: str | None, image_size: int | None,
                 count: int) -> np.ndarray:
  """uint8 [count, H, W, C]: the split's first images (or all, if it holds fewer)."""
  builder = _builder(dataset, data_dir)
  ds = _records(builder, split).take(count).map(_decoder(builder, image_size)).batch(count)
  return np.concatenate(list(ds.with_options(_options(1)).as_numpy_iterator()))
