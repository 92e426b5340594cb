"""Fault injection: kill real training with SIGKILL at random moments, relaunch, compare.

    python tools/crash_test.py --kills 10 --seed 0 --workdir /tmp/crash
    python tools/crash_test.py --kills 10 -- --config configs/cifar.py --config.data_dir=D ...

Runs launch.py once uninterrupted (the reference), then again in another workdir, killing it
with `kill -9` after a random delay (the seed chooses them) and relaunching, `--kills` times,
then lets it finish. With `--after_step N` each delay counts from the moment training has
reached step N (a kill that must land after a given checkpoint, however slow the machine is
that day). Reports, for each kill, the step training had reached, the step the next
launch resumed from and the steps lost (never more than the checkpoint interval), whether any
launch picked an unreadable checkpoint, and whether the final parameters equal the
reference's bitwise, and the whole final state (optimizer moments, any partial gradient
sum and weight EMA) too. Writes the report as JSON to WORKDIR/report.json. Exit code 0 when all
checks hold.
"""
import argparse
import json
import os
import random
import re
import shutil
import subprocess
import sys
import time

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # Where launch.py is.

DEFAULT_ARGS = ['--config', 'configs/photos.py', '--config.num_train_steps=5000',
                '--config.batch_size=32', '--config.checkpoint_every_steps=50',
                '--config.eval_every_steps=1000000', '--config.profile_num_steps=0']


def _launch(args, workdir, log_path):
  # Every step logged, so the step reached at a kill can be read from metrics.jsonl.
  command = ([sys.executable, os.path.join(REPO, 'launch.py'), '--workdir', workdir] + args +
             ['--config.log_every_steps=1'])
  log = open(log_path, 'w', encoding='utf-8')  # pylint: disable=consider-using-with
  return subprocess.Popen(command, cwd=REPO, stdout=log, stderr=subprocess.STDOUT), log


def _steps_reached(workdir) -> int:
  path = os.path.join(workdir, 'metrics.jsonl')
  if not os.path.exists(path):
    return 0
  steps = [0]
  with open(path, encoding='utf-8') as f:
    for line in f:
      try:
        record = json.loads(line)
      except json.JSONDecodeError:  # A line cut by the kill.
        continue
      if 'train/loss' in record:
        steps.append(record['step'])
  return max(steps)


def _newest_checkpoint(workdir) -> int:
  directory = os.path.join(workdir, 'checkpoints')
  steps = [int(n) for n in os.listdir(directory) if n.isdigit()] if os.path.isdir(directory) else []
  return max(steps, default=0)


def _final_state(workdir):
  """(step, parameters, whole state) of the newest checkpoint, as saved: the state holds the
  optimizer's moments, any partial gradient sum and any weight EMA (no model or config
  needed)."""
  import jax  # pylint: disable=g-import-not-at-top
  import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top
  step = _newest_checkpoint(workdir)
  saved = ocp.StandardCheckpointer().restore(
      os.path.join(workdir, 'checkpoints', str(step), 'default'))
  return step, jax.tree.leaves(saved['params']), jax.tree.leaves(saved)


def _wait_for_step(process, workdir: str, step: int) -> None:
  """Returns once training in `workdir` has reached `step` or `process` has ended."""
  while process.poll() is None and _steps_reached(workdir) < step:
    time.sleep(0.2)


def run(kills: int, seed: int, workdir: str, args: list[str], interval: int,
        min_delay: float, max_delay: float, after_step: int = 0) -> dict:
  rng = random.Random(seed)
  shutil.rmtree(workdir, ignore_errors=True)
  os.makedirs(workdir)
  reference, crashy = os.path.join(workdir, 'reference'), os.path.join(workdir, 'crashy')

  process, log = _launch(args, reference, os.path.join(workdir, 'reference.log'))
  reference_rc = process.wait()
  log.close()

  events = []
  for i in range(kills):
    log_path = os.path.join(workdir, f'crashy_{i}.log')
    process, log = _launch(args, crashy, log_path)
    delay = rng.uniform(min_delay, max_delay)
    if after_step:
      _wait_for_step(process, crashy, after_step)
    try:
      process.wait(timeout=delay)
      finished = True
    except subprocess.TimeoutExpired:
      process.kill()
      process.wait()
      finished = False
    log.close()
    # What the next launch resumes from: the newest checkpoint on disk after the kill.
    resume_step = _newest_checkpoint(crashy)
    reached = max(_steps_reached(crashy), resume_step)
    events.append({'launch': i, 'delay_s': round(delay, 2), 'finished_before_kill': finished,
                   'step_reached': reached, 'resumed_from': resume_step,
                   'steps_lost': reached - resume_step, 'log': log_path})
    if finished:
      break

  final_log = os.path.join(workdir, 'crashy_final.log')
  process, log = _launch(args, crashy, final_log)
  final_rc = process.wait()
  log.close()

  # Each relaunch that got as far as restoring must have resumed from that checkpoint.
  logs = [e['log'] for e in events[1:]] + [final_log]
  unreadable, mismatched = False, []
  for event, next_log in zip(events, logs):
    with open(next_log, encoding='utf-8') as f:
      text = f.read()
    found = re.search(r'Resumed from .* at step (\d+)', text)
    if found and int(found.group(1)) != event['resumed_from']:
      mismatched.append(event['launch'])
    unreadable |= 'cannot be read' in text

  same = same_state = None
  if reference_rc == 0 and final_rc == 0:
    (ref_step, ref_params, ref_state), (step, params, state) = (_final_state(reference),
                                                                _final_state(crashy))
    equal = lambda xs, ys: len(xs) == len(ys) and all(np.array_equal(a, b)
                                                      for a, b in zip(xs, ys))
    same = ref_step == step and equal(ref_params, params)
    same_state = ref_step == step and equal(ref_state, state)
  kills_made = sum(not e['finished_before_kill'] for e in events)
  report = {
      'kills': kills_made, 'reference_rc': reference_rc, 'final_rc': final_rc,
      'resumes': sum(1 for e in events if not e['finished_before_kill']),
      'max_steps_lost': max((e['steps_lost'] for e in events), default=0),
      'checkpoint_interval': interval, 'unreadable_checkpoint_picked': unreadable,
      'resumed_elsewhere_than_newest_checkpoint': mismatched,
      'final_params_equal': same, 'final_state_equal': same_state, 'events': events,
  }
  report['ok'] = (reference_rc == 0 and final_rc == 0 and same_state is True and not unreadable and
                  not mismatched and report['max_steps_lost'] <= interval)
  with open(os.path.join(workdir, 'report.json'), 'w', encoding='utf-8') as f:
    json.dump(report, f, indent=2)
  return report


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--kills', type=int, default=10)
  parser.add_argument('--seed', type=int, default=0)
  parser.add_argument('--workdir', default='/tmp/convae_crash_test')
  parser.add_argument('--min_delay', type=float, default=8.0,
                      help='Seconds after a launch before its kill, at least (startup included).')
  parser.add_argument('--max_delay', type=float, default=20.0)
  parser.add_argument('--after_step', type=int, default=0,
                      help='Count each delay from when training reached this step (0: from '
                      'the launch).')
  parser.add_argument('launch_args', nargs='*',
                      help=f'launch.py flags after --; default: {" ".join(DEFAULT_ARGS)}')
  options = parser.parse_args()
  args = options.launch_args or DEFAULT_ARGS
  interval = int(next((a.split('=')[1] for a in args
                       if a.startswith('--config.checkpoint_every_steps=')), 1000))
  start = time.time()
  report = run(options.kills, options.seed, options.workdir, args, interval, options.min_delay,
               options.max_delay, options.after_step)
  print(f'{"launch":>6} {"delay s":>8} {"step reached":>12} {"resumed from":>12} {"lost":>5}')
  for e in report['events']:
    print(f'{e["launch"]:>6} {e["delay_s"]:>8} {e["step_reached"]:>12} {e["resumed_from"]:>12} '
          f'{e["steps_lost"]:>5}' + ('  (finished first)' if e['finished_before_kill'] else ''))
  print(f'kills: {report["kills"]}, resumes: {report["resumes"]}, max steps lost: '
        f'{report["max_steps_lost"]} (checkpoint interval {interval}), unreadable checkpoint '
        f'picked: {report["unreadable_checkpoint_picked"]}, final parameters equal to the '
        f'uninterrupted run: {report["final_params_equal"]}, whole final state (optimizer, '
        f'EMA) equal: {report["final_state_equal"]} ({time.time() - start:.0f} s)')
  print('OK' if report['ok'] else 'FAILED')
  sys.exit(0 if report['ok'] else 1)


if __name__ == '__main__':
  main()
