"""Orbax checkpoints of the train state under WORKDIR/checkpoints.

The trainer hands over one host copy of the (replicated) state: Orbax cannot save the
host-local arrays that pmap produces, and one copy is all a restore needs.
"""
import os
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp


class Checkpointer:
  """Saves every few steps, keeps the newest `max_to_keep`, restores the latest."""

  def __init__(self, workdir: str, max_to_keep: int):
    self.directory = os.path.join(os.path.abspath(workdir), 'checkpoints')
    self._manager = ocp.CheckpointManager(
        self.directory,
        options=ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=True))

  def latest_step(self) -> int | None:
    return self._manager.latest_step()

  def save(self, step: int, state: Any) -> None:
    """Saves asynchronously; `state` must be host arrays (they are not donated later)."""
    self._manager.save(step, args=ocp.args.StandardSave(state))

  def restore(self, target: Any, step: int | None = None) -> Any:
    """Restores `step` (default: the latest) into the structure and dtypes of `target`."""
    step = self.latest_step() if step is None else step
    abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(np.shape(x), np.asarray(x).dtype),
                            target)
    restored = self._manager.restore(step, args=ocp.args.StandardRestore(abstract))
    return jax.tree.map(np.asarray, restored)

  def close(self) -> None:
    self._manager.wait_until_finished()
    self._manager.close()
