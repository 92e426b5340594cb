"""Writes tests/fixtures/seed_parity.npz: the PyTorch seed model's weights, inputs and outputs.

`tests/test_parity.py` loads it to check that the Flax `cae` model computes the same function
without importing torch. Deterministic; rerun from the repo root with
`python tools/make_parity_fixture.py` (needs torch).

Contents: the state dict under its torch names (float32), and for each input size HxW the
keys `inputs_HxW` / `outputs_HxW`, NHWC float32. The outputs are computed in float64 from the
float32 weights and inputs, then rounded, so they hold no float32 accumulation error of torch's.
"""
import pathlib

import numpy as np
import torch

from benchmarks import torch_seed

_ROOT = pathlib.Path(__file__).resolve().parents[1]

# (count, height, width): CIFAR-sized, and non-square to exercise full convolutionality.
_INPUT_SIZES = ((2, 32, 32), (1, 16, 24))
_OUTPUT = _ROOT / 'tests' / 'fixtures' / 'seed_parity.npz'


def main():
  torch.manual_seed(0)
  model = torch_seed.SeedAutoencoder().eval()
  arrays = {name: value.numpy() for name, value in model.state_dict().items()}
  model_f64 = torch_seed.SeedAutoencoder().eval()
  model_f64.load_state_dict(model.state_dict())
  model_f64.double()
  for count, height, width in _INPUT_SIZES:
    # Stored as uint8 pixels (small file); the model sees pixels / 255 in float32.
    pixels = torch.randint(0, 256, (count, 3, height, width), dtype=torch.uint8)
    images = pixels.float() / 255.0
    with torch.no_grad():
      outputs = model_f64(images.double()).float()
    arrays[f'pixels_{height}x{width}'] = pixels.permute(0, 2, 3, 1).numpy()
    arrays[f'outputs_{height}x{width}'] = outputs.permute(0, 2, 3, 1).numpy()
  arrays = {name: np.ascontiguousarray(value) for name, value in arrays.items()}
  _OUTPUT.parent.mkdir(parents=True, exist_ok=True)
  np.savez_compressed(_OUTPUT, **arrays)
  print(f'wrote {_OUTPUT} ({_OUTPUT.stat().st_size} bytes):')
  for name, value in arrays.items():
    print(f'  {name}: {value.dtype} {value.shape}')


if __name__ == '__main__':
  main()
