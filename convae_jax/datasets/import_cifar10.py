"""Prepares the TFDS `cifar10` dataset from a local copy of the official CIFAR-10 files.

TFDS downloads CIFAR-10 itself, which machines without network access can't do. This runs
the official TFDS `cifar10` builder with its download step pointed at local files, so the
prepared records are exactly those TFDS writes from the same files.

  python -m convae_jax.datasets.import_cifar10 --source cifar-10-binary.tar.gz --data_dir DIR

`--source` may be `cifar-10-binary.tar.gz`, `cifar-10-python.tar.gz`, their extracted
folders (`cifar-10-batches-bin/`, `cifar-10-batches-py/`) or a folder holding one of them.
"""
import contextlib
import gzip
import io
import os
import pickle
import shlex
import shutil
import sys
import tarfile
import tempfile
import zlib

import numpy as np
import tensorflow_datasets as tfds

from convae_jax import errors, paths

CIFAR10_URL = 'https://www.cs.toronto.edu/~kriz/cifar-10-binary.tar.gz'

MISSING_CIFAR10_HELP = (
    'CIFAR-10 is not in {data_dir} and could not be downloaded. Get cifar-10-binary.tar.gz '
    f'({CIFAR10_URL}) and run `python -m convae_jax.datasets.import_cifar10 --source '
    'cifar-10-binary.tar.gz --data_dir {data_dir}`, then pass --config.data_dir={data_dir};\n'
    'or try the offline embedded dataset: `python launch.py --config configs/photos.py '
    '--workdir runs/photos`.')

_BIN_DIR = 'cifar-10-batches-bin'
_PY_DIR = 'cifar-10-batches-py'
_BATCHES = ('data_batch_1', 'data_batch_2', 'data_batch_3', 'data_batch_4', 'data_batch_5',
            'test_batch')
_META_TXT = 'batches.meta.txt'
_IMAGE_BYTES = 32 * 32 * 3
_RECORD_BYTES = 1 + _IMAGE_BYTES
_NUM_CLASSES = 10
_ACCEPTED = (f'cifar-10-binary.tar.gz, cifar-10-python.tar.gz, {_BIN_DIR}/, {_PY_DIR}/ '
             'or a folder holding one of them')


class CifarImportError(errors.UserError):
  """Base of the errors a bad `--source` or `--data_dir` raises (one line, with the fix)."""


class SourceNotFoundError(CifarImportError, FileNotFoundError):
  pass


class UnrecognizedSourceError(CifarImportError, ValueError):
  pass


class CorruptArchiveError(CifarImportError, ValueError):
  pass


class BadBatchFileError(CifarImportError, ValueError):
  pass


class DatasetDirError(CifarImportError, ValueError):
  pass


def missing_cifar10_help(data_dir: str) -> str:
  """The message for an input pipeline that finds no CIFAR-10 in `data_dir`."""
  return MISSING_CIFAR10_HELP.format(data_dir=data_dir)


def import_cifar10(source: str, data_dir: str, verbose: bool = True) -> str:
  """Writes the TFDS-prepared `cifar10` into `data_dir`; returns the dataset's folder.

  Does nothing if a complete copy is already there. On failure nothing is left in
  `data_dir` that was not there before.
  """
  source = os.path.abspath(os.path.expanduser(source))
  data_dir = os.path.abspath(os.path.expanduser(data_dir))
  if not os.path.exists(source):
    raise SourceNotFoundError(f'CIFAR-10 source {source} does not exist; pass the path of '
                              f'{_ACCEPTED}.')
  try:
    paths.check_dir(data_dir, '--data_dir')
  except errors.UserError as e:
    raise DatasetDirError(str(e)) from None
  builder = tfds.builder('cifar10', data_dir=data_dir)
  data_path = os.fspath(builder.data_path)
  if os.path.exists(data_path):
    if not os.path.exists(os.path.join(data_path, 'dataset_info.json')):
      raise DatasetDirError(f'{data_path} exists but holds no complete dataset (no '
                            'dataset_info.json); delete it and run again.')
    if verbose:
      print(f'CIFAR-10 is already prepared in {data_path}; nothing to do.')
    return data_path

  with tempfile.TemporaryDirectory(prefix='cifar10_import_') as tmp:
    root = _stage(source, tmp)
    _check_bin_folder(os.path.join(root, _BIN_DIR))
    _prepare(builder, root, tmp)
  if verbose:
    splits = builder.info.splits
    print(f'Wrote CIFAR-10 ({splits["train"].num_examples} train + '
          f'{splits["test"].num_examples} test images) to {data_path}')
  return data_path


def _stage(source: str, tmp: str) -> str:
  """Returns a folder holding `cifar-10-batches-bin/` made from `source`."""
  if os.path.isdir(source):
    kind, folder = _find_batches(source, source)
  elif os.path.isfile(source):
    extracted = os.path.join(tmp, 'extracted')
    _extract(source, extracted)
    kind, folder = _find_batches(extracted, source)
  else:
    raise UnrecognizedSourceError(f'{source} is neither a file nor a folder; pass {_ACCEPTED}.')
  if kind == 'bin':
    return os.path.dirname(folder)
  converted = os.path.join(tmp, 'converted')
  _python_to_bin(folder, os.path.join(converted, _BIN_DIR))
  return converted


def _extract(archive: str, out: str) -> None:
  if not tarfile.is_tarfile(archive):
    if archive.endswith(('.tar.gz', '.tgz', '.tar')):
      raise CorruptArchiveError(f'{archive} is not a readable tar archive (truncated or '
                                f'corrupt); download it again from {CIFAR10_URL}.')
    raise UnrecognizedSourceError(f'{archive} is not a CIFAR-10 archive; pass {_ACCEPTED}.')
  try:
    with tarfile.open(archive, 'r:*') as tar:
      tar.extractall(out, filter='data')
  except (tarfile.TarError, EOFError, zlib.error, gzip.BadGzipFile) as e:
    raise CorruptArchiveError(f'{archive} is truncated or corrupt ({e}); download it again '
                              f'from {CIFAR10_URL}.') from e


def _find_batches(folder: str, source: str) -> tuple[str, str]:
  """Finds the batch folder in `folder`: ('bin' or 'py', its path). Prefers binary."""
  folder = os.path.normpath(folder)
  for kind, name in (('bin', _BIN_DIR), ('py', _PY_DIR)):
    if os.path.basename(folder) == name:
      return kind, folder
    if os.path.isdir(os.path.join(folder, name)):
      return kind, os.path.join(folder, name)
  raise UnrecognizedSourceError(f'{source} holds neither {_BIN_DIR}/ nor {_PY_DIR}/; pass '
                                f'{_ACCEPTED}.')


def _check_bin_folder(folder: str) -> None:
  """Raises BadBatchFileError unless `folder` holds well-formed CIFAR-10 binary batches."""
  for name in _BATCHES:
    path = os.path.join(folder, name + '.bin')
    if not os.path.isfile(path):
      raise BadBatchFileError(f'{folder} has no {name}.bin; the source is incomplete: '
                              'extract the official archive again.')
    size = os.path.getsize(path)
    if size == 0 or size % _RECORD_BYTES:
      raise BadBatchFileError(
          f'{path} is {size} bytes, not a whole number of {_RECORD_BYTES}-byte CIFAR-10 '
          'records (10000 records = 30730000 bytes); it is truncated or not a CIFAR-10 '
          'binary batch: extract the official archive again.')
    _check_labels(np.fromfile(path, dtype=np.uint8)[::_RECORD_BYTES], path)
  meta = os.path.join(folder, _META_TXT)
  if not os.path.isfile(meta):
    raise BadBatchFileError(f'{folder} has no {_META_TXT}; the source is incomplete: extract '
                            'the official archive again.')
  with open(meta) as f:
    names = [line for line in f.read().split('\n') if line]
  if len(names) != _NUM_CLASSES:
    raise BadBatchFileError(f'{meta} names {len(names)} classes, not {_NUM_CLASSES}; it is not '
                            'the CIFAR-10 label file.')


def _check_labels(labels: np.ndarray, path: str) -> None:
  bad = np.flatnonzero((labels < 0) | (labels >= _NUM_CLASSES))
  if bad.size:
    raise BadBatchFileError(f'{path} has label {labels[bad[0]]} at record {bad[0]}; CIFAR-10 '
                            f'labels are 0..{_NUM_CLASSES - 1} (is this CIFAR-100?).')


class _BatchUnpickler(pickle.Unpickler):
  """Loads only what a CIFAR-10 batch holds (numpy arrays), so a pickle can't run code."""

  _ALLOWED = {('numpy._core.multiarray', '_reconstruct'), ('numpy._core.multiarray', 'scalar'),
              ('numpy._core.numeric', '_frombuffer'), ('numpy', 'ndarray'), ('numpy', 'dtype'),
              ('_codecs', 'encode')}  # Python 3 writes bytes this way under protocol < 3.

  def find_class(self, module, name):
    # The official batches were pickled by Python 2 with numpy 1 (`numpy.core`).
    if module.startswith('numpy.core.') and hasattr(np, '_core'):
      module = 'numpy._core.' + module[len('numpy.core.'):]
    if (module, name) not in self._ALLOWED:
      raise pickle.UnpicklingError(f'{module}.{name} is not allowed in a CIFAR-10 batch')
    return super().find_class(module, name)


def _load_pickle(path: str) -> dict:
  try:
    with open(path, 'rb') as f:
      batch = _BatchUnpickler(f, encoding='bytes').load()
  except Exception as e:  # pylint: disable=broad-except
    raise BadBatchFileError(f'{path} is not a readable CIFAR-10 python batch ({e}); extract '
                            'the official archive again.') from e
  if not isinstance(batch, dict):
    raise BadBatchFileError(f'{path} is not a CIFAR-10 python batch (no dict inside).')
  return {k.decode('latin1') if isinstance(k, bytes) else k: v for k, v in batch.items()}


def _python_to_bin(py_dir: str, bin_dir: str) -> None:
  """Rewrites the pickled batches of `py_dir` in the binary layout TFDS reads."""
  os.makedirs(bin_dir)
  for name in _BATCHES:
    path = os.path.join(py_dir, name)
    if not os.path.isfile(path):
      raise BadBatchFileError(f'{py_dir} has no {name}; the source is incomplete: extract the '
                              'official archive again.')
    batch = _load_pickle(path)
    data, labels = batch.get('data'), batch.get('labels')
    if (not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2
        or data.shape[1] != _IMAGE_BYTES or labels is None or len(labels) != len(data)
        or not len(data)):
      shape = getattr(data, 'shape', None)
      raise BadBatchFileError(
          f'{path} holds data of shape {shape} and {None if labels is None else len(labels)} '
          f'labels, not N uint8 rows of {_IMAGE_BYTES} bytes with N labels; it is truncated '
          'or not a CIFAR-10 python batch: extract the official archive again.')
    labels = np.asarray(labels, dtype=np.int64)
    _check_labels(labels, path)
    records = np.empty((len(data), _RECORD_BYTES), dtype=np.uint8)
    records[:, 0] = labels
    records[:, 1:] = data
    records.tofile(os.path.join(bin_dir, name + '.bin'))
  meta_path = os.path.join(py_dir, 'batches.meta')
  if not os.path.isfile(meta_path):
    raise BadBatchFileError(f'{py_dir} has no batches.meta; the source is incomplete: extract '
                            'the official archive again.')
  names = _load_pickle(meta_path).get('label_names') or []
  names = [n.decode('utf-8') if isinstance(n, bytes) else str(n) for n in names]
  with open(os.path.join(bin_dir, _META_TXT), 'w') as f:
    f.write('\n'.join(names) + '\n')


def _prepare(builder: tfds.core.DatasetBuilder, root: str, tmp: str) -> None:
  """Runs the official builder with its download step answered by `root`."""
  data_dir = os.fspath(builder.data_dir_root)
  dataset_dir = os.fspath(builder.data_path.parent)
  made_data_dir = not os.path.exists(data_dir)
  made_dataset_dir = not os.path.exists(dataset_dir)
  make_download_manager = builder._make_download_manager  # pylint: disable=protected-access

  def local_download_manager(download_dir, download_config):
    dl_manager = make_download_manager(download_dir=download_dir,
                                       download_config=download_config)

    def download_and_extract(url):
      if url != CIFAR10_URL:
        raise RuntimeError(f'this TFDS cifar10 builder asks for {url!r}, not {CIFAR10_URL!r}; '
                           'import_cifar10 does not support this tensorflow-datasets version.')
      return root

    dl_manager.download_and_extract = download_and_extract
    return dl_manager

  # Only this builder instance is patched; TFDS itself is left as it was.
  builder._make_download_manager = local_download_manager  # pylint: disable=protected-access
  try:
    # TFDS prints "Downloading and preparing ... Unknown size" and progress bars; this says
    # what it did itself.
    tfds.disable_progress_bar()
    with contextlib.redirect_stdout(io.StringIO()):
      builder.download_and_prepare(
          download_dir=os.path.join(tmp, 'downloads'),
          download_config=tfds.download.DownloadConfig(try_download_gcs=False))
  except BaseException:
    # TFDS removes its own incomplete folder; remove the parents it made for it.
    if made_dataset_dir:
      shutil.rmtree(dataset_dir, ignore_errors=True)
    if made_data_dir:
      try:
        os.rmdir(data_dir)
      except OSError:
        pass
    raise


def main(argv: list[str] | None = None) -> int:
  parser = errors.ArgumentParser(
      description='Prepare the TFDS cifar10 dataset from a local copy of the official files.')
  parser.add_argument('--source', required=True, help=f'one of: {_ACCEPTED}')
  parser.add_argument('--data_dir', required=True, help='TFDS data dir to write cifar10 into')
  args = parser.parse_args(argv)
  try:
    path = import_cifar10(args.source, args.data_dir)
  except errors.UserError as e:
    return errors.report(e)
  data_dir = os.path.abspath(os.path.expanduser(args.data_dir))
  print(f'CIFAR-10 is ready in {path}')
  print('Train with: python launch.py --config configs/cifar.py --workdir runs/cae '
        f'--config.data_dir={shlex.quote(data_dir)}')
  return 0


if __name__ == '__main__':
  sys.exit(main())
