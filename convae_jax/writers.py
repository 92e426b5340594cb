"""Metric writers: clu's TensorBoard writer, plus WORKDIR/metrics.jsonl."""
import json
import math
import os
from typing import Any, Mapping

import jax
import numpy as np
from clu import metric_writers
from clu.metric_writers import interface


class JsonlWriter(interface.MetricWriter):
  """Appends one JSON object per write_scalars call: {"step": N, "train/loss": ..., ...}.

  Scripts compare runs from this file without TensorBoard. Non-finite values are written as
  strings ("nan", "inf") so that every line stays valid JSON.
  """

  def __init__(self, path: str):
    self._path = path
    self._file = open(path, 'a', encoding='utf-8')  # pylint: disable=consider-using-with

  def write_scalars(self, step: int, scalars: Mapping[str, Any]):
    record = {'step': int(step)}
    for key, value in scalars.items():
      value = float(np.asarray(value))
      record[key] = value if math.isfinite(value) else str(value)
    self._file.write(json.dumps(record) + '\n')
    self._file.flush()

  def write_summaries(self, step, values, metadata=None):
    pass

  def write_images(self, step, images):
    pass

  def write_videos(self, step, videos):
    pass

  def write_audios(self, step, audios, *, sample_rate):
    pass

  def write_texts(self, step, texts):
    pass

  def write_histograms(self, step, arrays, num_buckets=None):
    pass

  def write_hparams(self, hparams):
    pass

  def flush(self):
    self._file.flush()

  def close(self):
    self._file.close()


def create_writer(workdir: str) -> metric_writers.MetricWriter:
  """Process 0 writes TensorBoard events and metrics.jsonl; the trainer's own log lines are
  the console's (one per log step and evaluation). The other processes write nothing."""
  if jax.process_index() > 0:
    return metric_writers.MultiWriter([])
  return metric_writers.MultiWriter([
      metric_writers.SummaryWriter(workdir),
      JsonlWriter(os.path.join(workdir, 'metrics.jsonl')),
  ])
