"""The terms `config.losses` adds to the model's own, as the train step uses them: their
constants, the networks they train, their losses and metrics, and VQGAN's adaptive weight."""
import functools
import operator
from typing import Any, Mapping

import jax
import jax.numpy as jnp
import ml_collections
import optax
from flax.training import train_state

from convae_jax.losses import term as term_lib

# VQGAN's adaptive weight: |grad of the other terms| / (|grad of the term| + EPSILON) at the
# decoder's last layer, clipped to [0, MAX_ADAPTIVE_WEIGHT] (taming-transformers' values).
EPSILON = 1e-4
MAX_ADAPTIVE_WEIGHT = 1e4
# Folded into the run's init key for the terms' networks (the model's init stays as it was).
_NETWORKS_KEY = 0x6C6F7373


class Objective:
  """The terms of `losses_config` (config.losses: {term name: its settings}), in name order."""

  def __init__(self, losses_config: Mapping[str, Any] | ml_collections.ConfigDict | None):
    self.terms: dict[str, term_lib.LossTerm] = {}
    for name, settings in sorted(dict(losses_config or {}).items()):
      if name not in term_lib.TERMS.names():
        raise ValueError(f'config.losses.{name}: no such loss term; known: '
                         f'{", ".join(term_lib.TERMS.names())}')
      if not isinstance(settings, (Mapping, ml_collections.ConfigDict)):
        raise ValueError(f'config.losses.{name}={settings!r}: set it to the term\'s settings, '
                         f'e.g. {{\'weight\': 1.0}}')
      self.terms[name] = term_lib.TERMS.create({'name': name, **dict(settings)})

  def __bool__(self) -> bool:
    return bool(self.terms)

  @property
  def adaptive(self) -> tuple[str, ...]:
    """The terms scaled by the adaptive weight."""
    return tuple(name for name, term in self.terms.items() if term.adaptive)

  @property
  def networks(self) -> dict[str, Any]:
    """The networks the terms train, by term name."""
    return {name: net for name, term in self.terms.items()
            if (net := term.trained_network()) is not None}

  def check(self, model, image_channels: int) -> None:
    for term in self.terms.values():
      term.check(model, image_channels)

  def constants(self) -> dict[str, Any]:
    """The terms' constants (host arrays), by term name."""
    return {name: term.constants() for name, term in self.terms.items()}

  def init_networks(self, rng: jax.Array, image_shape: tuple[int, ...],
                    tx: optax.GradientTransformation) -> dict[str, train_state.TrainState]:
    """Fresh states (parameters and optimizer state under `tx`) of the terms' networks."""
    rng = jax.random.fold_in(rng, _NETWORKS_KEY)
    images = jnp.zeros((1,) + image_shape)
    return {name: train_state.TrainState.create(
                apply_fn=net.apply, tx=tx,
                params=net.init(jax.random.fold_in(rng, i), images)['params'])
            for i, (name, net) in enumerate(sorted(self.networks.items()))}

  def inputs(self, name: str, images, reconstruction, step, constants, networks,
             value_range) -> term_lib.TermInputs:
    params = networks[name].params if name in networks else None
    return term_lib.TermInputs(images=images, reconstruction=reconstruction, step=step,
                               constants=constants.get(name, {}), params=params,
                               value_range=tuple(value_range))

  def term_losses(self, images, reconstruction, step, constants, networks, value_range):
    """({name: weight * mean loss} of the other terms, {name: mean loss} of the adaptive ones,
    metrics {'loss_NAME': mean loss before weights, 'NAME_METRIC': ...})."""
    fixed, adaptive, values = {}, {}, {}
    for name, term in self.terms.items():
      loss, metrics = term(self.inputs(name, images, reconstruction, step, constants, networks,
                                       value_range))
      loss = jnp.mean(loss)
      values[f'loss_{name}'] = loss
      values.update({f'{name}_{k}': v for k, v in metrics.items()})
      if term.adaptive:
        adaptive[name] = loss
      else:
        fixed[name] = term.weight * loss
    return fixed, adaptive, values

  def add_adaptive_terms(self, loss, grads, adaptive: dict, adaptive_grads: dict,
                         output_layer: tuple[str, ...], axis_name: str):
    """(loss, grads, metrics) with each adaptive term added at `weight` times its adaptive
    weight; `grads` are the other terms' gradient, averaged over `axis_name`, and
    `adaptive_grads` each adaptive term's, averaged here, so the weight is one of the whole
    batch whatever the devices."""
    values = {}
    for name, term_grads in adaptive_grads.items():
      term_grads = jax.lax.pmean(term_grads, axis_name=axis_name)
      weight = adaptive_weight(grads, term_grads, output_layer)
      scale = weight * self.terms[name].weight
      grads = jax.tree.map(lambda g, t, scale=scale: g + scale * t, grads, term_grads)
      loss = loss + scale * adaptive[name]
      values[f'{name}_adaptive_weight'] = weight
    return loss, grads, values

  def train_networks(self, networks: dict, images, reconstruction, step, constants,
                     value_range, axis_name: str):
    """(the terms' networks after one step each against the reconstructions, which get no
    gradient; the sum of their losses; their metrics). Gradients are averaged over
    `axis_name`."""
    reconstruction = jax.lax.stop_gradient(reconstruction)
    trained, total, values = {}, jnp.zeros(()), {}
    for name, network in networks.items():
      inputs = self.inputs(name, images, reconstruction, step, constants, networks, value_range)
      (loss, metrics), grads = jax.value_and_grad(
          lambda p, inputs=inputs, name=name: self.terms[name].network_loss(
              inputs.replace(params=p)), has_aux=True)(network.params)
      trained[name] = network.apply_gradients(grads=jax.lax.pmean(grads, axis_name=axis_name))
      total = total + loss
      values.update({f'{name}_{k}': v for k, v in metrics.items()})
    return trained, total, values

  def metric_names(self, image_shape: tuple[int, ...]) -> list[str]:
    """The names the train step logs for the terms, read off their outputs."""
    if not self.terms:
      return []
    images = jnp.zeros((1,) + image_shape)
    step = jnp.zeros((), jnp.int32)
    networks = jax.eval_shape(lambda: self.init_networks(jax.random.key(0), image_shape,
                                                         optax.identity()))
    constants = jax.eval_shape(self.constants)
    _, _, values = jax.eval_shape(lambda c, n: self.term_losses(
        images, images, step, c, n, (0.0, 1.0)), constants, networks)
    names = list(values) + [f'{name}_adaptive_weight' for name in self.adaptive]
    for name in networks:
      _, metrics = jax.eval_shape(lambda c, n, name=name: self.terms[name].network_loss(
          self.inputs(name, images, images, step, c, n, (0.0, 1.0))), constants, networks)
      names += [f'{name}_{k}' for k in metrics]
    return names


def adaptive_weight(other_grads, term_grads, path: tuple[str, ...]) -> jax.Array:
  """VQGAN's adaptive weight of a term: the gradient norm of the other terms over the term's,
  at the parameters under `path` (the decoder's last kernel), clipped; no gradient flows
  through it."""
  at = lambda grads: functools.reduce(operator.getitem, path, grads)
  ratio = optax.tree.norm(at(other_grads)) / (optax.tree.norm(at(term_grads)) + EPSILON)
  return jax.lax.stop_gradient(jnp.clip(ratio, 0.0, MAX_ADAPTIVE_WEIGHT))
