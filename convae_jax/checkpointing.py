"""Orbax checkpoints of the train state under WORKDIR/checkpoints.

The trainer hands over one host copy of the (replicated) state: Orbax cannot save the
host-local arrays that pmap produces, and one copy is all a restore needs.

With several processes (a shared workdir), every process calls save with its identical
host copy: Orbax's CheckpointManager holds barriers across processes around each save and
writes replicated numpy arrays from process 0 only (orbax.checkpoint NumpyHandler). A
checkpoint is therefore plain arrays with no device layout, and restores on any number of
processes or devices: every process reads it whole.

Orbax writes each checkpoint into a temporary folder and renames it when complete, so a
process killed mid-save never leaves a checkpoint that looks finished. A finished one that
still cannot be read (a damaged disk, a file truncated by hand) is moved aside to
WORKDIR/checkpoints_unreadable/ with a warning, and the next newest is used; nothing is
deleted. A checkpoint of another model, or of other training settings (optimizer, schedule,
gradient accumulation, weight EMA), is refused: its workdir belongs to another run.
"""
import os
import shutil
import sys
import time
from typing import Any

import flax.traverse_util
import jax
import numpy as np
import orbax.checkpoint as ocp
from absl import logging

from convae_jax import distributed, errors


class IncompatibleCheckpointError(errors.UserError):
  """The workdir's checkpoints were written by a different model or optimizer."""


def _ignore_reads_after_a_failed_restore() -> None:
  """Drops the one harmless error Orbax leaves behind when a read fails.

  TensorStore reads still in flight then complete into Orbax's event loop, which the
  failure has closed (in a restore or a metadata read); each reports `RuntimeError: Event loop is closed` as an unraisable
  exception (a traceback on stderr, though the run goes on as designed). Every other
  unraisable exception still reaches the previous hook.
  """
  previous = sys.unraisablehook
  if getattr(previous, 'convae_filter', False):
    return

  def hook(unraisable):
    if not (isinstance(unraisable.exc_value, RuntimeError) and
            str(unraisable.exc_value) == 'Event loop is closed'):
      previous(unraisable)

  hook.convae_filter = True
  sys.unraisablehook = hook


def finished_steps(workdir: str) -> list[int]:
  """Steps of the finished checkpoints in WORKDIR/checkpoints, oldest first; reads none.

  Orbax writes into a temporary folder and renames it to the step when complete.
  """
  directory = os.path.join(workdir, 'checkpoints')
  if not os.path.isdir(directory):
    return []
  return sorted(int(name) for name in os.listdir(directory)
                if name.isdigit() and os.path.isdir(os.path.join(directory, name)))


def _leaf_paths(tree: Any) -> set[str]:
  """The paths of a tree's leaves as 'a/b/0/c', alike for a train state and Orbax's metadata
  of one (attributes, dict keys and sequence indices all become names)."""
  def name(key) -> str:
    for attr in ('name', 'key', 'idx'):
      if hasattr(key, attr):
        return str(getattr(key, attr))
    return str(key)
  leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
  return {'/'.join(name(key) for key in path) for path, _ in leaves}


class Checkpointer:
  """Saves every few steps, keeps the newest `max_to_keep`, restores the newest readable."""

  def __init__(self, workdir: str, max_to_keep: int):
    _ignore_reads_after_a_failed_restore()
    self.workdir = os.path.abspath(workdir)
    self.directory = os.path.join(self.workdir, 'checkpoints')
    self._manager = ocp.CheckpointManager(
        self.directory, item_handlers=ocp.StandardCheckpointHandler(),
        options=ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=True))

  def latest_step(self) -> int | None:
    return self._manager.latest_step()

  def save(self, step: int, state: Any) -> None:
    """Saves `state` (host arrays) and returns once the checkpoint is complete on disk.

    Waiting (tens of milliseconds for these models) bounds what a kill can lose to the
    steps since the last save: no step runs while a save is still only in flight.
    """
    self._manager.save(step, args=ocp.args.StandardSave(state))
    self._manager.wait_until_finished()

  def restore(self, target: Any, step: int | None = None) -> Any:
    """Restores `step` (default: the latest) into the structure and dtypes of `target`
    (arrays, or jax.ShapeDtypeStruct leaves such as train.abstract_train_state gives)."""
    step = self.latest_step() if step is None else step
    abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(
        np.shape(x), x.dtype if hasattr(x, 'dtype') else np.asarray(x).dtype), target)
    restored = self._manager.restore(step, args=ocp.args.StandardRestore(abstract))
    return jax.tree.map(np.asarray, restored)

  def restore_newest_readable(self, target: Any) -> Any | None:
    """The newest checkpoint that reads back, or None when there is none."""
    for step in sorted(self._manager.all_steps(), reverse=True):
      try:
        # Processes agree: one that cannot read it makes it unreadable for all.
        with distributed.same_outcome(IncompatibleCheckpointError):
          saved = self._manager.item_metadata(step).tree
          self._check_compatible(step, saved, target)
          return self.restore(target, step)
      except IncompatibleCheckpointError:
        raise
      except Exception as e:  # pylint: disable=broad-except  # Any read failure means the same.
        aside = self._move_aside(step)
        logging.warning('Checkpoint %d in %s cannot be read (%s: %s); moved it to %s and '
                        'trying the next newest.', step, self.directory, type(e).__name__,
                        (str(e).splitlines() or [''])[0][:200], aside)
    return None

  def _check_compatible(self, step: int, saved: Any, target: Any) -> None:
    shapes = lambda tree: {'/'.join(map(str, k)): tuple(getattr(v, 'shape', np.shape(v)))
                           for k, v in flax.traverse_util.flatten_dict(tree).items()}
    ours = shapes(flax.serialization.to_state_dict(target)['params'])
    theirs = shapes(saved['params'])
    if ours != theirs:
      differ = sorted(set(ours.items()) ^ set(theirs.items()))[0][0]
      raise IncompatibleCheckpointError(
          f'checkpoint {step} in {self.directory} was written by a different model (parameter '
          f'{differ} differs from this config\'s); use a new --workdir, or the config that '
          'wrote it')

    theirs, ours = _leaf_paths(saved), _leaf_paths(target)
    if theirs != ours:
      differ = sorted(theirs ^ ours)[0]
      where = 'the checkpoint has it and this config has not' if differ in theirs else (
          'this config has it and the checkpoint has not')
      raise IncompatibleCheckpointError(
          f'checkpoint {step} in {self.directory} was written with other training settings '
          f'(state entry {differ}: {where}; the optimizer, schedule, accumulate_steps or '
          'ema_decay changed); resume with the config that wrote it '
          f'({os.path.join(self.workdir, "config.json")}), or use a new --workdir')

  def _move_aside(self, step: int) -> str:
    """Process 0 moves the checkpoint; all processes then forget it."""
    aside = os.path.join(self.workdir, 'checkpoints_unreadable')
    if jax.process_index() == 0:
      os.makedirs(aside, exist_ok=True)
      aside = os.path.join(aside, f'{step}.{time.strftime("%Y%m%d-%H%M%S")}')
      shutil.move(os.path.join(self.directory, str(step)), aside)
    distributed.barrier(f'checkpoint {step} moved aside')
    self._manager.reload()
    return aside

  def close(self) -> None:
    self._manager.wait_until_finished()
    self._manager.close()
