"""Trained weights shipped inside the package, by preset name: nothing is downloaded.

    inference.load('pretrained:resae')                    (Python)
    convae reconstruct --pretrained resae PHOTO.jpg ...   (every CLI mode)
    python launch.py ... --config.init_from=pretrained:resae   (fine-tuning)

Each NAME has two files in this folder: NAME.msgpack, the weights a run is evaluated with
({'params', 'model_state'}, flax.serialization), and NAME.json, its manifest: the whole
config it was trained with, the data, its steps, training time and machine kind, its test
figures and the weights' sha256, which loading checks. `tools/pretrained.py` trains a preset
and writes both.
"""
import hashlib
import json
import os
import platform

from flax import serialization

from convae_jax import errors

PREFIX = 'pretrained:'
DIRECTORY = os.path.dirname(os.path.abspath(__file__))


class PretrainedError(errors.UserError, ValueError):
  """An unknown name, or shipped weights that do not match their manifest."""


def names() -> list[str]:
  """The shipped presets, sorted."""
  return sorted(f[:-len('.json')] for f in os.listdir(DIRECTORY)
                if f.endswith('.json'))


def name_of(source: str) -> str | None:
  """'pretrained:NAME' -> NAME; anything else (a workdir) -> None."""
  return source[len(PREFIX):] if source.startswith(PREFIX) else None


def manifest(name: str) -> dict:
  """NAME's manifest; refuses an unknown name."""
  shipped = names()
  if name not in shipped:
    raise PretrainedError(f'no pretrained model {name!r}; shipped: {", ".join(shipped) or "none"}'
                          ' (convae pretrained lists them)')
  with open(os.path.join(DIRECTORY, f'{name}.json'), encoding='utf-8') as f:
    return json.load(f)


def weights(name: str) -> dict:
  """NAME's weights, {'params': ..., 'model_state': ...} of numpy arrays, once their sha256
  matches the manifest's; refuses a missing, changed or unreadable file."""
  expected = manifest(name)['sha256']
  path = os.path.join(DIRECTORY, f'{name}.msgpack')
  try:
    with open(path, 'rb') as f:
      data = f.read()
  except OSError as e:
    raise PretrainedError(f'{path} cannot be read ({e.strerror}); reinstall convae_jax') from None
  if hashlib.sha256(data).hexdigest() != expected:
    raise PretrainedError(f'{path} does not match the sha256 in {name}.json (corrupt or '
                          'changed); reinstall convae_jax')
  try:
    restored = serialization.msgpack_restore(data)
  except Exception as e:  # pylint: disable=broad-except  # Any failure means the same here.
    raise PretrainedError(f'{path} cannot be read as weights ({type(e).__name__}); reinstall '
                          'convae_jax') from None
  return {'params': restored.get('params', {}), 'model_state': restored.get('model_state', {})}


def write(name: str, variables: dict, manifest_fields: dict) -> dict:
  """Writes NAME.msgpack (`variables`: {'params', 'model_state'}) and NAME.json
  (`manifest_fields` plus the weights' sha256 and size); returns the manifest."""
  data = serialization.msgpack_serialize(variables)
  with open(os.path.join(DIRECTORY, f'{name}.msgpack'), 'wb') as f:
    f.write(data)
  written = {'name': name, **manifest_fields, 'sha256': hashlib.sha256(data).hexdigest(),
             'bytes': len(data)}
  write_manifest(name, written)
  return written


def write_manifest(name: str, manifest_fields: dict) -> str:
  """Writes NAME.json; returns its path."""
  path = os.path.join(DIRECTORY, f'{name}.json')
  with open(path, 'w', encoding='utf-8') as f:
    json.dump(manifest_fields, f, indent=2, sort_keys=True)
    f.write('\n')
  return path


def machine_kind() -> str:
  """The CPU this process runs on, as manifests record it: its model name and whether it has
  AVX-512 (figures are bitwise only on the kind that recorded them)."""
  model, avx512 = platform.processor() or platform.machine(), False
  try:
    with open('/proc/cpuinfo', encoding='utf-8') as f:
      for line in f:
        if line.startswith('model name') and ':' in line:
          model = line.split(':', 1)[1].strip()
        if line.startswith('flags') and ' avx512f' in line:
          avx512 = True
  except OSError:
    pass
  return f'{model}, {"AVX-512" if avx512 else "no AVX-512"}'
