import gzip
import os
import pickle
import struct

import numpy as np
import pytest
import tensorflow_datasets as tfds

from g2g_jax import data


def write_idx(path, array, gz=True):
  header = struct.pack('>HBB', 0, 0x08, array.ndim) + struct.pack(f'>{array.ndim}I', *array.shape)
  opener = gzip.open if gz else open
  with opener(path + ('.gz' if gz else ''), 'wb') as f:
    f.write(header + array.astype(np.uint8).tobytes())


def fake_split(n, shape, classes, seed):
  rng = np.random.default_rng(seed)
  return rng.integers(0, 256, (n, *shape), dtype=np.uint8), rng.integers(0, classes, n).astype(np.int32)


def test_idx_fashion_mnist_round_trip(tmp_path):
  x_tr, y_tr = fake_split(6, (28, 28), 10, 0)
  x_te, y_te = fake_split(4, (28, 28), 10, 1)
  write_idx(str(tmp_path / 'train-images-idx3-ubyte'), x_tr)
  write_idx(str(tmp_path / 'train-labels-idx1-ubyte'), y_tr)
  write_idx(str(tmp_path / 't10k-images-idx3-ubyte'), x_te, gz=False)
  write_idx(str(tmp_path / 't10k-labels-idx1-ubyte'), y_te, gz=False)
  ds = data.load_dataset(data.DataSpec('fashion_mnist', source='local', dir=str(tmp_path)))
  assert ds.source == str(tmp_path)
  np.testing.assert_array_equal(ds.train_images[..., 0], x_tr)
  np.testing.assert_array_equal(ds.train_labels, y_tr)
  np.testing.assert_array_equal(ds.test_images[..., 0], x_te)
  np.testing.assert_array_equal(ds.test_labels, y_te)


def test_idx_rejects_a_bad_header(tmp_path):
  (tmp_path / 'bad').write_bytes(b'\x00\x00\x0d\x01' + b'\x00' * 8)
  with pytest.raises(ValueError, match='not an unsigned-byte IDX'):
    data.read_idx(str(tmp_path / 'bad'))


def test_cifar10_binary_layout(tmp_path):
  d = tmp_path / 'cifar-10-batches-bin'
  d.mkdir()
  splits = {}
  for i, name in enumerate([f'data_batch_{k}.bin' for k in range(1, 6)] + ['test_batch.bin']):
    chw, y = fake_split(3, (3, 32, 32), 10, i)
    (d / name).write_bytes(np.concatenate([y.astype(np.uint8)[:, None], chw.reshape(3, -1)], 1).tobytes())
    splits[name] = (chw.transpose(0, 2, 3, 1), y)
  ds = data.load_dataset(data.DataSpec('cifar10', source='local', dir=str(tmp_path)))
  assert ds.train_images.shape == (15, 32, 32, 3)
  np.testing.assert_array_equal(ds.train_images[:3], splits['data_batch_1.bin'][0])
  np.testing.assert_array_equal(ds.train_labels[3:6], splits['data_batch_2.bin'][1])
  np.testing.assert_array_equal(ds.test_images, splits['test_batch.bin'][0])


def _write_pickle(path, obj):
  with open(path, 'wb') as f:
    pickle.dump(obj, f, protocol=2)


def test_cifar10_and_cifar100_python_pickles(tmp_path):
  d10 = tmp_path / 'cifar-10-batches-py'
  d10.mkdir()
  for i, name in enumerate([f'data_batch_{k}' for k in range(1, 6)] + ['test_batch']):
    chw, y = fake_split(2, (3, 32, 32), 10, i)
    _write_pickle(d10 / name, {b'data': chw.reshape(2, -1), b'labels': [int(v) for v in y], b'batch_label': b'x'})
  ds = data.load_dataset(data.DataSpec('cifar10', source='local', dir=str(tmp_path)))
  assert ds.source.endswith('cifar-10-batches-py')
  assert ds.train_images.shape == (10, 32, 32, 3) and ds.test_images.shape == (2, 32, 32, 3)
  chw, y = fake_split(2, (3, 32, 32), 10, 5)
  np.testing.assert_array_equal(ds.test_images, chw.transpose(0, 2, 3, 1))
  np.testing.assert_array_equal(ds.test_labels, y)

  d100 = tmp_path / 'cifar-100-python'
  d100.mkdir()
  chw, y = fake_split(4, (3, 32, 32), 100, 9)
  for name in ('train', 'test'):
    _write_pickle(
      d100 / name, {b'data': chw.reshape(4, -1), b'fine_labels': list(map(int, y)), b'coarse_labels': [0] * 4}
    )
  ds = data.load_dataset(data.DataSpec('cifar100', source='local', dir=str(tmp_path)))
  assert ds.num_classes == 100
  np.testing.assert_array_equal(ds.train_labels, y)


class _Evil:
  def __reduce__(self):
    return (os.system, ('echo pwned',))


def test_restricted_unpickler_refuses_code(tmp_path):
  _write_pickle(tmp_path / 'evil', {b'data': _Evil()})
  with pytest.raises(pickle.UnpicklingError, match='refusing to load'):
    data.restricted_load(str(tmp_path / 'evil'))


def test_not_found_error_says_where_it_looked_and_how_to_get_it(tmp_path):
  with pytest.raises(data.DataNotFoundError) as e:
    data.load_dataset(data.DataSpec('cifar100', source='local', dir=str(tmp_path)))
  msg = str(e.value)
  assert str(tmp_path / 'cifar-100-python') in msg and 'To get it' in msg


def test_synthetic_is_deterministic_and_shaped():
  sizes = dict(synthetic_num_train=20, synthetic_num_test=10, synthetic_image_size=8, synthetic_channels=3)
  spec = data.DataSpec('synthetic', **sizes, synthetic_num_classes=4)
  a = data.load_dataset(spec)
  b = data.load_dataset(spec)
  np.testing.assert_array_equal(a.train_images, b.train_images)
  assert a.train_images.shape == (20, 8, 8, 3) and a.train_images.dtype == np.uint8
  assert a.test_labels.max() < 4
  named = data.load_dataset(data.DataSpec('cifar100', source='synthetic', **sizes))
  assert named.train_images.shape == (20, 32, 32, 3) and named.num_classes == 100


def test_tfds_source_under_mock_data(monkeypatch):
  monkeypatch.setattr(data, '_network_answers', lambda *a, **k: True)  # mock_data stands in for a download
  with tfds.testing.mock_data(num_examples=12):
    ds = data.load_dataset(data.DataSpec('cifar10', source='tfds'))
  assert ds.train_images.shape == (12, 32, 32, 3) and ds.train_images.dtype == np.uint8
  assert ds.train_labels.dtype == np.int32 and ds.train_labels.max() < 10
