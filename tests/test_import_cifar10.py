"""Offline CIFAR-10 import: fake official archives in, the TFDS `cifar10` records out."""
import os
import pickle
import tarfile

import numpy as np
import pytest
import tensorflow_datasets as tfds

from convae_jax.datasets import import_cifar10 as ic

_PER_FILE = 20
_NAMES = ['airplane', 'automobile', 'bird', 'cat', 'deer', 'dog', 'frog', 'horse', 'ship',
          'truck']
_TRAIN = ['data_batch_1', 'data_batch_2', 'data_batch_3', 'data_batch_4', 'data_batch_5']


@pytest.fixture(scope='module')
def fake():
  """Images (N, 32, 32, 3) and labels per batch file, random but fixed."""
  rng = np.random.default_rng(0)
  return {name: (rng.integers(0, 256, (_PER_FILE, 32, 32, 3), dtype=np.uint8),
                 rng.integers(0, 10, _PER_FILE))
          for name in _TRAIN + ['test_batch']}


def _planes(images):
  """(N, 32, 32, 3) -> (N, 3072) rows of R, G, B planes, as the official files store them."""
  return images.transpose(0, 3, 1, 2).reshape(len(images), -1)


def _write_binary(root, fake):
  folder = root / 'cifar-10-batches-bin'
  folder.mkdir(parents=True)
  for name, (images, labels) in fake.items():
    records = np.concatenate([labels[:, None].astype(np.uint8), _planes(images)], axis=1)
    (folder / f'{name}.bin').write_bytes(records.tobytes())
  (folder / 'batches.meta.txt').write_text('\n'.join(_NAMES) + '\n\n')
  (folder / 'readme.html').write_text('<html></html>')
  return folder


def _write_python(root, fake):
  folder = root / 'cifar-10-batches-py'
  folder.mkdir(parents=True)
  for name, (images, labels) in fake.items():
    batch = {b'batch_label': name.encode(), b'labels': [int(l) for l in labels],
             b'data': _planes(images), b'filenames': [b'x.png'] * len(labels)}
    # Named as in the official batches, which numpy 1 pickled under Python 2.
    data = pickle.dumps(batch, protocol=2).replace(b'numpy._core.', b'numpy.core.')
    (folder / name).write_bytes(data)
  meta = {b'label_names': [n.encode() for n in _NAMES], b'num_cases_per_batch': _PER_FILE,
          b'num_vis': 3072}
  (folder / 'batches.meta').write_bytes(pickle.dumps(meta, protocol=2))
  return folder


def _tar(folder, path):
  with tarfile.open(path, 'w:gz') as tar:
    tar.add(folder, arcname=folder.name)
  return path


def _load(data_dir, split):
  ds = tfds.load('cifar10', split=split, data_dir=str(data_dir), download=False, batch_size=-1)
  ds = tfds.as_numpy(ds)
  # TFDS stores records in the order of a hash of their key; `id` is the original index.
  order = np.argsort(ds['id'])
  return ds['image'][order], ds['label'][order]


@pytest.mark.parametrize('fmt,form', [('binary', 'tarball'), ('binary', 'batches folder'),
                                      ('python', 'tarball'), ('python', 'parent folder')])
def test_import_matches_source(tmp_path, fake, fmt, form):
  write = _write_binary if fmt == 'binary' else _write_python
  folder = write(tmp_path / 'src', fake)
  source = {'tarball': lambda: _tar(folder, tmp_path / f'cifar-10-{fmt}.tar.gz'),
            'batches folder': lambda: folder,
            'parent folder': lambda: folder.parent}[form]()
  data_dir = tmp_path / 'tfds'

  path = ic.import_cifar10(str(source), str(data_dir))

  assert os.path.isfile(os.path.join(path, 'dataset_info.json'))
  assert sorted(os.listdir(data_dir)) == ['cifar10']
  images, labels = _load(data_dir, 'train')
  np.testing.assert_array_equal(images, np.concatenate([fake[n][0] for n in _TRAIN]))
  np.testing.assert_array_equal(labels, np.concatenate([fake[n][1] for n in _TRAIN]))
  images, labels = _load(data_dir, 'test')
  np.testing.assert_array_equal(images, fake['test_batch'][0])
  np.testing.assert_array_equal(labels, fake['test_batch'][1])
  assert tfds.builder('cifar10', data_dir=str(data_dir)).info.features['label'].names == _NAMES


def test_cli_success_then_already_there(tmp_path, fake, capsys):
  source = _tar(_write_binary(tmp_path / 'src', fake), tmp_path / 'cifar-10-binary.tar.gz')
  data_dir = tmp_path / 'tfds'
  argv = ['--source', str(source), '--data_dir', str(data_dir)]

  assert ic.main(argv) == 0
  out = capsys.readouterr().out
  assert (f'python launch.py --config configs/cifar.py --workdir runs/cae '
          f'--config.data_dir={data_dir}') in out
  assert 'Downloading' not in out
  info = next(data_dir.glob('cifar10/*/dataset_info.json'))
  mtime = info.stat().st_mtime_ns

  assert ic.main(argv) == 0
  assert 'already prepared' in capsys.readouterr().out
  assert info.stat().st_mtime_ns == mtime


def _assert_fails_cleanly(source, data_dir, error, match):
  with pytest.raises(error, match=match):
    ic.import_cifar10(str(source), str(data_dir))
  assert not (data_dir / 'cifar10').exists()


def test_missing_source(tmp_path):
  with pytest.raises(FileNotFoundError):
    ic.import_cifar10(str(tmp_path / 'nope.tar.gz'), str(tmp_path / 'tfds'))
  _assert_fails_cleanly(tmp_path / 'nope.tar.gz', tmp_path / 'tfds', ic.SourceNotFoundError,
                        'does not exist')


def test_unrecognized_folder(tmp_path):
  (tmp_path / 'src').mkdir()
  _assert_fails_cleanly(tmp_path / 'src', tmp_path / 'tfds', ic.UnrecognizedSourceError,
                        'holds neither cifar-10-batches-bin/ nor cifar-10-batches-py/')


def test_truncated_tarball(tmp_path, fake):
  archive = _tar(_write_binary(tmp_path / 'src', fake), tmp_path / 'cifar-10-binary.tar.gz')
  archive.write_bytes(archive.read_bytes()[:archive.stat().st_size // 2])
  _assert_fails_cleanly(archive, tmp_path / 'tfds', ic.CorruptArchiveError,
                        'truncated or corrupt')


def test_wrong_size_binary_batch(tmp_path, fake):
  folder = _write_binary(tmp_path / 'src', fake)
  batch = folder / 'data_batch_3.bin'
  batch.write_bytes(batch.read_bytes()[:-5])
  _assert_fails_cleanly(folder, tmp_path / 'tfds', ic.BadBatchFileError,
                        'data_batch_3.bin is .* bytes, not a whole number')


def test_wrong_size_python_batch(tmp_path, fake):
  folder = _write_python(tmp_path / 'src', fake)
  batch = {b'labels': [0] * 4, b'data': np.zeros((4, 3000), np.uint8)}
  (folder / 'test_batch').write_bytes(pickle.dumps(batch, protocol=2))
  _assert_fails_cleanly(folder, tmp_path / 'tfds', ic.BadBatchFileError,
                        'test_batch holds data of shape')


def test_python_batch_cannot_run_code(tmp_path, fake):
  folder = _write_python(tmp_path / 'src', fake)
  (folder / 'data_batch_1').write_bytes(pickle.dumps(os.system, protocol=2))
  _assert_fails_cleanly(folder, tmp_path / 'tfds', ic.BadBatchFileError,
                        'is not allowed in a CIFAR-10 batch')


def test_failure_inside_tfds_leaves_nothing(tmp_path, fake, monkeypatch):
  from tensorflow_datasets.image_classification import cifar  # pylint: disable=g-import-not-at-top

  def broken_load_data(path, labels_number=1):
    raise RuntimeError('disk on fire')

  monkeypatch.setattr(cifar, '_load_data', broken_load_data)
  _assert_fails_cleanly(_write_binary(tmp_path / 'src', fake), tmp_path / 'tfds',
                        RuntimeError, 'disk on fire')
  assert not (tmp_path / 'tfds').exists()


def test_incomplete_version_dir_is_reported(tmp_path, fake):
  os.makedirs(tfds.builder('cifar10', data_dir=str(tmp_path / 'tfds')).data_path)
  with pytest.raises(ic.DatasetDirError, match='delete it and run again'):
    ic.import_cifar10(str(_write_binary(tmp_path / 'src', fake)), str(tmp_path / 'tfds'))


def test_cli_error_is_one_line(tmp_path, capsys):
  argv = ['--source', str(tmp_path / 'nope'), '--data_dir', str(tmp_path / 'tfds')]
  assert ic.main(argv) == 2
  err = capsys.readouterr().err
  assert err.startswith('error: ') and err.count('\n') == 1


def test_missing_help_names_the_data_dir():
  text = ic.missing_cifar10_help('/data/tfds')
  assert '--data_dir /data/tfds' in text and '--config.data_dir=/data/tfds' in text
  assert 'configs/photos.py' in text and text.count('\n') <= 1
