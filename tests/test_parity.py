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

_FIXTURE = pathlib.Path(__file__).parent / 'fixtures' / 'seed_parity.npz'
# Flax (module, layer) <- prefix of the layer's names in the torch state dict.
_LAYERS = {('encoder', 'conv1'): 'encoder.0', ('encoder', 'conv2'): 'encoder.3',
           ('decoder', 'deconv1'): 'decoder.0', ('decoder', 'deconv2'): 'decoder.2'}


def torch_to_flax(arrays) -> dict:
  """Torch-named seed weights -> the Flax `cae` params tree.

  Conv2d [out, in, kh, kw] -> [kh, kw, in, out]; ConvTranspose2d [in, out, kh, kw] ->
  [kh, kw, in, out]. Neither is flipped.
  """
  params = {}
  for (module, layer), prefix in _LAYERS.items():
    perm = (2, 3, 1, 0) if layer.startswith('conv') else (2, 3, 0, 1)
    params.setdefault(module, {})[layer] = {
        'kernel': np.transpose(arrays[f'{prefix}.weight'], perm),
        'bias': np.asarray(arrays[f'{prefix}.bias'])}
  return params


@pytest.fixture(scope='module')
def fixture():
  with np.load(_FIXTURE) as data:
    return dict(data)


@pytest.fixture(scope='module')
def model():
  return models.create_model(cifar.model('cae'))


def test_converted_params_match_flax_layout(fixture, model):
  converted = torch_to_flax(fixture)
  initial = model.init(jax.random.PRNGKey(0), np.zeros((1, 32, 32, 3), np.float32))['params']
  shapes = lambda tree: jax.tree.map(np.shape, tree)
  assert shapes(converted) == shapes(jax.device_get(initial))
  count = lambda tree: sum(np.size(x) for x in jax.tree.leaves(tree))
  assert count(initial) == count(converted) == 7347


@pytest.mark.parametrize('size', ['32x32', '16x24'])
def test_outputs_match_torch(fixture, model, size):
  inputs = fixture[f'pixels_{size}'].astype(np.float32) / np.float32(255.0)
  expected = fixture[f'outputs_{size}']
  out = model.apply({'params': torch_to_flax(fixture)}, inputs)
  reconstruction = np.asarray(out.reconstruction)
  assert reconstruction.shape == expected.shape == inputs.shape
  np.testing.assert_allclose(reconstruction, expected, rtol=0, atol=1e-5)
