"""The Flax seed model computes the same function as the PyTorch original.

The reference comes from `tests/fixtures/seed_parity.npz`, written by
`tools/make_parity_fixture.py`; this test needs no torch.
"""
import pathlib

import jax
import numpy as np
import pytest

from configs import cifar
from convae_jax import models
from convae_jax.cpu import kernels as cpu_kernels
from convae_jax.models.backbones import seed

_FIXTURE = pathlib.Path(__file__).parent / 'fixtures' / 'seed_parity.npz'


@pytest.fixture(scope='module')
def fixture():
  with np.load(_FIXTURE) as data:
    return dict(data)


@pytest.fixture(scope='module')
def model():
  return models.create_model(cifar.model('cae'))


def test_converted_params_match_flax_layout(fixture, model):
  converted = seed.params_from_torch(fixture)
  initial = model.init(jax.random.PRNGKey(0), np.zeros((1, 32, 32, 3), np.float32))['params']
  shapes = lambda tree: jax.tree.map(np.shape, tree)
  assert shapes(converted) == shapes(jax.device_get(initial))
  count = lambda tree: sum(np.size(x) for x in jax.tree.leaves(tree))
  assert count(initial) == count(converted) == 7347


@pytest.mark.parametrize('kernels', ['none', 'pooled_conv,conv_transpose'])
@pytest.mark.parametrize('size', ['32x32', '16x24'])
def test_outputs_match_torch(fixture, model, size, kernels):
  inputs = fixture[f'pixels_{size}'].astype(np.float32) / np.float32(255.0)
  expected = fixture[f'outputs_{size}']
  with cpu_kernels.use(kernels):
    out = model.apply({'params': seed.params_from_torch(fixture)}, inputs)
  reconstruction = np.asarray(out.reconstruction)
  assert reconstruction.shape == expected.shape == inputs.shape
  np.testing.assert_allclose(reconstruction, expected, rtol=0, atol=1e-5)
