"""The trainer's data: the two input modes behind one interface, and the choice between them.

`open_source(config, mode, ...)` gives an InMemory (input_pipeline.py) or a Streaming
(streaming.py) source; both yield the same batches' shapes, so the trainer does not know
which it reads. `choose_mode` turns config.input_mode='auto' into one of them.
"""
import math

import numpy as np
from absl import logging

from convae_jax import errors, input_pipeline, streaming


class InputModeError(errors.UserError):
  """A config.input_mode this dataset cannot use."""


def choose_mode(config, info: input_pipeline.DatasetInfo) -> tuple[str, str]:
  """(mode, why): config.input_mode, or for 'auto' the mode the splits' size calls for."""
  sizes = [info.num_examples[config.train_split], info.num_examples[config.eval_split]]
  if config.input_mode == 'streaming' and None in sizes:
    raise InputModeError(f'dataset {config.dataset!r} has no split metadata, which streaming '
                         'reads; set --config.input_mode=in_memory')
  if config.input_mode != 'auto':
    return config.input_mode, f'config.input_mode={config.input_mode}'
  if None in sizes:
    return 'in_memory', 'auto: the split sizes are unknown'
  mib = sum(sizes) * math.prod(info.image_shape) / 2**20
  relation = 'within' if mib <= config.in_memory_limit_mb else 'over'
  return ('in_memory' if relation == 'within' else 'streaming',
          f'auto: the train and eval splits take {mib:.0f} MiB of pixels per host, {relation} '
          f'config.in_memory_limit_mb={config.in_memory_limit_mb}')


class InMemory:
  """Both splits decoded into this host's memory (input_pipeline.py)."""

  def __init__(self, config, num_local_devices: int, process_index: int, process_count: int):
    self._config, self._where = config, dict(num_local_devices=num_local_devices,
                                             process_index=process_index,
                                             process_count=process_count)
    load = lambda split: input_pipeline.load_split(config.dataset, split, config.data_dir,
                                                   config.image_size)
    self._train, self._eval = load(config.train_split), load(config.eval_split)
    self.image_shape = self._train.images.shape[1:]
    self.num_train_examples = self._train.num_examples
    self.num_eval_examples = self._eval.num_examples

  def train_batches(self, start_step: int):
    return input_pipeline.train_batches(
        self._train, global_batch_size=self._config.batch_size, seed=self._config.seed,
        start_step=start_step, **self._where)

  def eval_batches(self):
    return input_pipeline.eval_batches(
        self._eval, global_batch_size=self._config.eval_batch_size, **self._where)

  def grid_images(self, count: int) -> np.ndarray:
    """uint8 images to show beside their reconstructions: `count` drawn by the seed."""
    indices = np.sort(np.random.default_rng(self._config.seed).choice(
        self.num_eval_examples, min(count, self.num_eval_examples), replace=False))
    return self._eval.images[indices]


class Streaming:
  """Each process reads only its share of the files (streaming.py)."""

  def __init__(self, config, info: input_pipeline.DatasetInfo, num_local_devices: int,
               process_index: int, process_count: int):
    self._config, self._where = config, dict(num_local_devices=num_local_devices,
                                             process_index=process_index,
                                             process_count=process_count)
    self.image_shape = info.image_shape
    self.num_train_examples = info.num_examples[config.train_split]
    self.num_eval_examples = info.num_examples[config.eval_split]
    logging.info('Streaming: process %d of %d reads its share of %s:%s and of %s:%s',
                 process_index, process_count, config.dataset, config.train_split,
                 config.dataset, config.eval_split)

  def train_batches(self, start_step: int):
    c = self._config
    return streaming.train_batches(
        c.dataset, c.train_split, c.data_dir, image_size=c.image_size,
        shuffle_buffer=c.shuffle_buffer, global_batch_size=c.batch_size, seed=c.seed,
        start_step=start_step, **self._where)

  def eval_batches(self):
    c = self._config
    return streaming.eval_batches(
        c.dataset, c.eval_split, c.data_dir, image_size=c.image_size,
        image_shape=self.image_shape, global_batch_size=c.eval_batch_size, **self._where)

  def grid_images(self, count: int) -> np.ndarray:
    """uint8 images to show beside their reconstructions: the split's first `count`."""
    c = self._config
    return streaming.first_images(c.dataset, c.eval_split, c.data_dir, c.image_size, count)


def open_source(config, mode: str, info: input_pipeline.DatasetInfo, num_local_devices: int,
                process_index: int, process_count: int) -> InMemory | Streaming:
  if mode == 'streaming':
    return Streaming(config, info, num_local_devices, process_index, process_count)
  return InMemory(config, num_local_devices, process_index, process_count)
