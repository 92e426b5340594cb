"""The training loop every trainer runs (train.py for autoencoders, prior_train.py for priors
over their codes): steps, logs, evaluations, checkpoints and stops, the same for any model.

`train` runs a replicated state from `start_step` to `num_train_steps` with a pmapped step
(steps.make_train_step with `accumulate`), logging the train metrics every
config.log_every_steps (and stopping on non-finite values or too many skipped updates),
calling `evaluate` every config.eval_every_steps and at the end, and saving every
config.checkpoint_every_steps, at the end and on SIGTERM/SIGINT (then raising
preemption.Preempted).
"""
import json
import math
import os
import time
from typing import Any, Callable, Iterator

import flax.jax_utils
import jax
from absl import logging
from clu import periodic_actions

from convae_jax import checkpointing, config_checks, distributed, optimizer, preemption, steps


def train(config, workdir: str, state: steps.TrainState, *, start_step: int,
          num_train_steps: int, p_train_step, no_train_metrics: Callable[[], Any],
          train_batches: Iterator, evaluate: Callable[[int, Any], dict[str, float]],
          checkpointer: checkpointing.Checkpointer, writer, step_rng: jax.Array,
          devices) -> steps.TrainState:
  """Trains the host `state` from `start_step` to `num_train_steps`; returns its host copy.

  `p_train_step(state, totals, batch, rng) -> (state, totals)` is the pmapped step, starting
  from `no_train_metrics()` (replicated totals); `train_batches` yields each step's batch
  [devices, ...]; `evaluate(step, replicated state)` gives the scalars it wrote. Closes the
  checkpointer and the writer.
  """
  train_iter = flax.jax_utils.prefetch_to_device(train_batches, 2, devices)
  hooks = []
  if jax.process_index() == 0 and config.profile_num_steps > 0:
    hooks.append(periodic_actions.Profile(logdir=workdir,
                                          num_profile_steps=config.profile_num_steps,
                                          first_profile=start_step + 10))
  progress = _Progress(start_step, num_train_steps, config.batch_size)

  state = steps.replicate(state, devices)
  train_metrics = no_train_metrics()
  last_eval = {}
  two_steps_back = None  # The metrics of the step before the last.
  last_logged = last_kept = start_step
  logging.info('Training from step %d to %d', start_step, num_train_steps)
  try:
    with preemption.StopRequest() as stop:
      for step in range(start_step + 1, num_train_steps + 1):
        # The host runs at most two steps ahead of the device: each step queued further
        # ahead would hold its own buffers.
        jax.block_until_ready(two_steps_back)
        two_steps_back = train_metrics
        with jax.profiler.StepTraceAnnotation('train', step_num=step):
          state, train_metrics = p_train_step(state, train_metrics, next(train_iter), step_rng)
        if step == start_step + 1:  # Speed is timed from here: the first step compiles.
          jax.block_until_ready(train_metrics)
          progress.restart(step)
        for hook in hooks:
          hook(step)
        is_last = step == num_train_steps
        stopping = stop_agreed(stop, step, config, is_last)
        save_now = step % config.checkpoint_every_steps == 0 or is_last or stopping
        # Logging also checks the values are finite, so it runs before every save.
        if step % config.log_every_steps == 0 or save_now:
          scalars = flax.jax_utils.unreplicate(train_metrics).compute()
          steps_per_sec = progress.log(step, float(scalars['loss']))
          last_kept = max(last_kept, float(scalars['last_kept_step']))
          _check_skips(step, last_kept, config, checkpointer)
          # With every step of the window skipped, its averages are of nothing (NaN).
          applied_any = float(scalars['skipped_steps']) < step - last_logged
          _check_finite(scalars, last_logged, step, config.on_non_finite, checkpointer,
                        applied_any)
          logged = {f'train/{k}': float(v) for k, v in scalars.items()
                    if k not in ('first_non_finite_step', 'last_kept_step')}
          logged['uptime'] = progress.seconds()  # Of this process's training.
          if steps_per_sec is not None:
            logged['steps_per_sec'] = steps_per_sec
          writer.write_scalars(step, logged)
          train_metrics, last_logged = no_train_metrics(), step
        if (step % config.eval_every_steps == 0 or is_last) and not stopping:
          last_eval = dict(evaluate(step, state), step=step)
          logging.info('Evaluation at %s', eval_summary(last_eval))
        if save_now:
          checkpointer.save(step, jax.device_get(flax.jax_utils.unreplicate(state)))
        if stopping:
          raise preemption.Preempted(step, stop.signal_name or 'a signal to another process')
  finally:
    checkpointer.close()
    writer.flush()
    writer.close()
  logging.info('Done: trained to step %d of %d in %s. Final evaluation: %s. Outputs in %s: '
               'metrics.jsonl, images/, checkpoints/%d, TensorBoard events', num_train_steps,
               num_train_steps, progress.elapsed(), eval_summary(last_eval), workdir,
               num_train_steps)
  return jax.device_get(flax.jax_utils.unreplicate(state))


def num_train_steps(config, num_train_examples: int) -> int:
  """config.num_train_steps, or num_epochs' steps rounded down to whole updates (a multiple
  of accumulate_steps)."""
  if config.num_train_steps > 0:
    return config.num_train_steps
  k = config.accumulate_steps
  return max(k, int(config.num_epochs * num_train_examples // config.batch_size) // k * k)


class _Progress:
  """One log line per log step, to show a run is alive: step, loss, speed since the last line
  (compilation left out), time left."""

  def __init__(self, start_step: int, num_train_steps: int, batch_size: int):
    self._start = self._last = (time.monotonic(), start_step)
    self._num_train_steps, self._batch_size = num_train_steps, batch_size

  def restart(self, step: int) -> None:
    """Times the next line's window from now, after `step`."""
    self._last = (time.monotonic(), step)

  def log(self, step: int, loss: float) -> float | None:
    """Logs the line; returns the window's steps per second (None for an empty window)."""
    now = time.monotonic()
    seconds, steps = now - self._last[0], step - self._last[1]
    self._last = (now, step)
    if steps <= 0 or seconds <= 0:
      return None
    left = (self._num_train_steps - step) * seconds / steps
    if jax.process_index() == 0:
      logging.info('Step %d of %d (%.0f%%): loss %.4g, %.0f examples/s, %s left', step,
                   self._num_train_steps, 100 * step / self._num_train_steps, loss,
                   steps * self._batch_size / seconds, _duration(left))
    return steps / seconds

  def seconds(self) -> float:
    return time.monotonic() - self._start[0]

  def elapsed(self) -> str:
    return _duration(self.seconds())


def _duration(seconds: float) -> str:
  minutes, seconds = divmod(int(round(seconds)), 60)
  hours, minutes = divmod(minutes, 60)
  return f'{hours}h{minutes:02d}m' if hours else f'{minutes}m{seconds:02d}s' if minutes else (
      f'{seconds}s')


def eval_summary(scalars: dict[str, float]) -> str:
  if not scalars:
    return '(none)'
  shown = ', '.join(f'{k}={v:.4g}' for k, v in sorted(scalars.items()) if k.startswith('eval/'))
  return f'step {scalars["step"]}: {shown}'


def stop_agreed(stop: preemption.StopRequest, step: int, config, is_last: bool) -> bool:
  """Whether to stop after this step on a signal. All processes must stop at the same step,
  so with several they compare at log and save steps only, where the host waits anyway."""
  if jax.process_count() == 1:
    return stop.requested
  if step % config.log_every_steps and step % config.checkpoint_every_steps and not is_last:
    return False
  return distributed.any_process(stop.requested)


def _check_finite(scalars: dict[str, Any], last_logged: int, step: int, on_non_finite: str,
                  checkpointer: checkpointing.Checkpointer, applied_any: bool = True) -> None:
  """Stops the run on non-finite values unless they are skipped (then it only logs them)."""
  bad = [what for what, flag in (('loss', 'non_finite_loss'), ('gradients', 'non_finite_grads'))
         if float(scalars[flag]) > 0]
  if not bad and on_non_finite == 'stop' and applied_any:  # E.g. parameters that overflowed.
    bad = [f'train/{k}' for k, v in scalars.items()
           if k not in ('first_non_finite_step', 'last_kept_step') and
           not math.isfinite(float(v))]
  if not bad:
    return
  first = float(scalars['first_non_finite_step'])
  where = (f'first at step {int(first)}' if math.isfinite(first) else
           f'in steps {last_logged + 1}-{step}')
  if on_non_finite == 'skip':
    logging.warning('Step %d: skipped updates with non-finite %s (%s)', step, ' and '.join(bad),
                    where)
    return
  raise FloatingPointError(
      f'step {step}: non-finite {" and ".join(bad)} ({where}); stopped without saving (last '
      f'checkpoint: step {checkpointer.latest_step()}). Lower the learning rate, or set '
      '--config.on_non_finite=skip to skip such steps')


def check_warmup(config, num_train_steps: int) -> None:
  warmup = optimizer.warmup_steps(config, num_train_steps)
  if warmup >= num_train_steps:
    raise config_checks.ConfigError(
        f'config.warmup_steps: a warm-up of {warmup} steps is not shorter than the run '
        f'({num_train_steps} steps); lower --config.warmup_steps (or warmup_fraction)')


def _check_skips(step: int, last_kept: float, config, checkpointer) -> None:
  """Stops a run whose updates have been skipped too many times in a row."""
  skipped = step - last_kept
  if config.skip_grad_norm_above > 0 and skipped > config.max_consecutive_skips:
    raise FloatingPointError(
        f'step {step}: the last {int(skipped)} updates were skipped (gradient norm above '
        f'config.skip_grad_norm_above={config.skip_grad_norm_above}), more than '
        f'config.max_consecutive_skips={config.max_consecutive_skips} in a row; stopped '
        f'without saving (last checkpoint: step {checkpointer.latest_step()}). Raise the '
        'threshold or lower the learning rate')


def last_eval_line(workdir: str) -> str:
  path = os.path.join(workdir, 'metrics.jsonl')
  last = {}
  if os.path.exists(path):
    with open(path, encoding='utf-8') as f:
      for line in f:
        if '"eval/' in line:
          last = json.loads(line)
  return eval_summary(last)
