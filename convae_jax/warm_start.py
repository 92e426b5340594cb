"""config.init_from: a new run that starts from other weights (big_vision's `model_init`).

'pretrained:NAME' takes a shipped preset's weights, 'WORKDIR' or 'WORKDIR:STEP' a run's (its
EMA weights where it has them: what it is evaluated with). The optimizer state is fresh, and
so is the EMA (from the loaded weights). Only a run with no checkpoint of its own starts this
way: one that has them resumes from them.
"""
import re

import jax
import optax

from convae_jax import config_checks, errors, steps


def parse(init_from: str) -> tuple[str, int | None]:
  """'WORKDIR[:STEP]' or 'pretrained:NAME' -> (source, step or None)."""
  match = re.fullmatch(r'(.+):(\d+)', init_from)
  if match and not init_from.startswith('pretrained:'):
    return match.group(1), int(match.group(2))
  return init_from, None


def load(init_from: str, model, image_shape: tuple[int, ...], tx) -> dict:
  """The weights `init_from` names, {'params', 'model_state'}, checked to fit `model` (trained
  on images of `image_shape` with `tx`); raises ConfigError naming the first difference."""
  from convae_jax import inference  # pylint: disable=g-import-not-at-top  (imports the CLI's deps)
  source, step = parse(init_from)
  try:
    trained = inference.load(source, step)
  except errors.UserError as e:
    raise config_checks.ConfigError(f'config.init_from={init_from!r}: {e}') from None
  target = steps.abstract_train_state(model, tx, image_shape)
  variables = {'params': trained.state.params, 'model_state': trained.state.model_state}
  difference = steps.variables_difference(target, variables)
  if difference:
    raise config_checks.ConfigError(
        f'config.init_from={init_from!r}: its weights do not fit config.model ({difference}); '
        'start from a run of the same model')
  return jax.tree.map(lambda x, t: jax.numpy.asarray(x, t.dtype), variables,
                      {'params': target.params, 'model_state': target.model_state})


def start_from(state: steps.TrainState, variables: dict, ema_decay: float) -> steps.TrainState:
  """A fresh `state` holding `variables` (and an EMA that starts from them)."""
  state = state.replace(params=variables['params'], model_state=variables['model_state'],
                        opt_state=state.tx.init(variables['params']))
  if isinstance(state, steps.EmaTrainState):
    state = state.replace(ema=optax.ema(ema_decay).init(variables['params']))
  return state
