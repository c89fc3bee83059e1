"""Datasets as in-memory uint8 arrays, from tfds, local official-format files or synthetic.

All datasets used here fit in memory many times over, so a split is two arrays:
images uint8 [N, H, W, C] and labels int32 [N]. Scaling to [0, 1] and augmentation
happen on the device, inside the jitted step (input_pipeline.preprocess).

Source order for `source='auto'`: tfds if it already holds a prepared copy; the local
official-format files under `data_dir` (and the Debian location for Fashion-MNIST);
a tfds download when `download` is on and the network answers at once; else an error
that says where it looked.
"""

import codecs
import dataclasses
import gzip
import hashlib
import io
import os
import pickle
import socket
import struct
import zlib

import numpy as np
from absl import logging

from g2g_jax.fields import Bool, Choice, Int, Text, check, field
from g2g_jax.state import STREAMS


@dataclasses.dataclass(frozen=True)
class DatasetInfo:
  image_shape: tuple[int, int, int]
  num_classes: int
  num_train: int
  num_test: int
  augment: str  # what 'auto' augmentation means for this dataset


DATASETS = {
  'fashion_mnist': DatasetInfo((28, 28, 1), 10, 60000, 10000, 'none'),
  'cifar10': DatasetInfo((32, 32, 3), 10, 50000, 10000, 'crop_flip'),
  'cifar100': DatasetInfo((32, 32, 3), 100, 50000, 10000, 'crop_flip'),
  'synthetic': None,  # shape from SyntheticSpec
}
SOURCES = ('auto', 'tfds', 'local', 'synthetic')
AUGMENTS = ('auto', 'none', 'crop_flip')
DEBIAN_FASHION_MNIST = '/usr/share/datasets/fashion-mnist'
DEFAULT_DATA_DIR = '~/.cache/g2g_jax'


@dataclasses.dataclass(frozen=True)
class SyntheticSpec:
  """A learnable stand-in for a real dataset (see make_synthetic)."""

  num_train: int = 512
  num_test: int = 256
  image_size: int = 28
  channels: int = 1
  num_classes: int = 10
  noise: float = 0.5  # std of the per-example noise, in units of the pixel range
  seed: int = 0  # the data's own seed: a dataset, not a run's randomness (config.seed leaves it alone)


@dataclasses.dataclass(frozen=True)
class DataSpec:
  """Which dataset, where to look for it, and how training augments it (config.data)."""

  name: str = field('fashion_mnist', Choice(tuple(DATASETS)), "'fashion_mnist' | 'cifar10' | 'cifar100' | 'synthetic'")
  source: str = field(
    'auto',
    Choice(SOURCES),
    "where to look: 'auto' (tfds prepared > local files > tfds download) | 'tfds' | 'local' | 'synthetic'",
  )
  dir: str = field('', Text(), "root of local official-format copies; '' = ~/.cache/g2g_jax")
  tfds_data_dir: str = field('', Text(), "tfds' data dir; '' = tfds' default")
  download: bool = field(True, Bool(), "let 'auto' download through tfds when the network answers")
  augment: str = field(
    'auto', Choice(AUGMENTS), "'auto' (crop+flip for CIFAR, none for Fashion-MNIST) | 'none' | 'crop_flip'"
  )
  crop_padding: int = field(4, Int(0), 'pixels of zero padding around a random crop')
  synthetic_num_train: int = field(512, Int(1), "examples, synthetic data only (name or source 'synthetic')")
  synthetic_num_test: int = field(256, Int(1), 'examples, synthetic data only')
  synthetic_image_size: int = field(28, Int(1), 'pixels per side, synthetic data only')
  synthetic_channels: int = field(1, Int(1), 'synthetic data only')
  synthetic_num_classes: int = field(10, Int(2), 'synthetic data only')

  def __post_init__(self):
    check(self)

  @property
  def synthetic(self) -> SyntheticSpec:
    return SyntheticSpec(
      self.synthetic_num_train,
      self.synthetic_num_test,
      self.synthetic_image_size,
      self.synthetic_channels,
      self.synthetic_num_classes,
    )

  @property
  def info(self) -> DatasetInfo:
    """The shapes and split sizes this spec loads (synthetic sizes with source 'synthetic')."""
    if self.name == 'synthetic':
      return dataset_info(self.name, self.synthetic)
    info = DATASETS[self.name]
    if self.source == 'synthetic':  # random content in the named dataset's shape
      return dataclasses.replace(info, num_train=self.synthetic_num_train, num_test=self.synthetic_num_test)
    return info


@dataclasses.dataclass(frozen=True)
class Dataset:
  name: str
  source: str  # where the arrays came from, for the log
  kind: str  # the kind of source: 'tfds' | 'local' | 'synthetic'
  train_images: np.ndarray
  train_labels: np.ndarray
  test_images: np.ndarray
  test_labels: np.ndarray
  num_classes: int

  @property
  def image_shape(self) -> tuple[int, ...]:
    return self.train_images.shape[1:]

  def identity(self) -> dict:
    """What a run trains on: the dataset, the kind of source, the split sizes and a hash of the
    arrays (two copies that differ in one pixel or in their order are different data)."""
    digest = hashlib.sha1()
    for array in (self.train_images, self.train_labels, self.test_images, self.test_labels):
      digest.update(np.ascontiguousarray(array))
    return {
      'name': self.name,
      'source': self.kind,
      'num_train': len(self.train_images),
      'num_test': len(self.test_images),
      'sha1': digest.hexdigest()[:16],
    }


class DataNotFoundError(FileNotFoundError):
  """No copy of the dataset where the spec says to look."""


class DataError(ValueError):
  """A copy of the dataset that is not what it should be (its size, its contents)."""


def dataset_info(name: str, synthetic: SyntheticSpec = SyntheticSpec()) -> DatasetInfo:
  """Static facts about a dataset, known without loading it."""
  if name == 'synthetic':
    shape = (synthetic.image_size, synthetic.image_size, synthetic.channels)
    return DatasetInfo(shape, synthetic.num_classes, synthetic.num_train, synthetic.num_test, 'none')
  return DATASETS[name]


# ---------------------------------------------------------------------------------
# Local official formats.


def _open_maybe_gz(path: str) -> tuple[bytes, str]:
  """(contents, the file read): path, or path.gz decompressed."""
  for candidate in (path, path + '.gz'):
    if os.path.exists(candidate):
      try:
        if candidate.endswith('.gz'):
          with gzip.open(candidate, 'rb') as f:
            return f.read(), candidate
        with open(candidate, 'rb') as f:
          return f.read(), candidate
      except (EOFError, OSError, zlib.error) as e:  # truncated or not gzip at all
        raise DataError(f'{candidate}: unreadable ({e}); get the file again') from None
  raise DataNotFoundError(path)


def read_idx(path: str) -> np.ndarray:
  """Reads an IDX file (MNIST / Fashion-MNIST format), gzipped or not."""
  raw, where = _open_maybe_gz(path)
  if len(raw) < 4:
    raise DataError(f'{where}: {len(raw)} bytes, too short for an IDX file; get the file again')
  zero, dtype_code, ndim = struct.unpack('>HBB', raw[:4])
  if zero != 0 or dtype_code != 0x08 or len(raw) < 4 + 4 * ndim:
    raise DataError(f'{where}: not an unsigned-byte IDX file (magic {raw[:4].hex()}); get the file again')
  shape = struct.unpack(f'>{ndim}I', raw[4 : 4 + 4 * ndim])
  data = np.frombuffer(raw, np.uint8, offset=4 + 4 * ndim)
  if data.size != int(np.prod(shape)):
    raise DataError(f'{where}: its header says {shape}, the file holds {data.size} bytes; get the file again')
  return data.reshape(shape)


def _fashion_mnist_dirs(data_dir: str) -> list[str]:
  return [
    data_dir,
    os.path.join(data_dir, 'fashion-mnist'),
    os.path.join(data_dir, 'fashion_mnist'),
    DEBIAN_FASHION_MNIST,
  ]


def load_fashion_mnist_idx(directory: str):
  def split(prefix):
    images = read_idx(os.path.join(directory, f'{prefix}-images-idx3-ubyte'))
    labels = read_idx(os.path.join(directory, f'{prefix}-labels-idx1-ubyte'))
    return images[..., None], labels.astype(np.int32)

  return (*split('train'), *split('t10k'))


def load_cifar_bin(directory: str):
  """cifar-10-batches-bin: records of 1 label byte + 3072 pixel bytes (CHW)."""

  def read(names):
    raw = np.concatenate([np.fromfile(os.path.join(directory, n), np.uint8) for n in names])
    if raw.size % 3073:
      raise DataError(
        f'{directory}: {", ".join(names)} hold {raw.size} bytes, not whole records of 3073; get the files again'
      )
    records = raw.reshape(-1, 3073)
    images = records[:, 1:].reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
    return np.ascontiguousarray(images), records[:, 0].astype(np.int32)

  for n in [f'data_batch_{i}.bin' for i in range(1, 6)] + ['test_batch.bin']:
    if not os.path.exists(os.path.join(directory, n)):
      raise DataNotFoundError(os.path.join(directory, n))
  return (*read([f'data_batch_{i}.bin' for i in range(1, 6)]), *read(['test_batch.bin']))


class _RestrictedUnpickler(pickle.Unpickler):
  """Admits plain containers, numbers, strings, bytes and numpy arrays, nothing else.

  The official `-py` CIFAR files are pickles; `pickle.load` on a file from elsewhere
  can run arbitrary code, this cannot.
  """

  _np_core = getattr(np, '_core', None) or np.core
  ALLOWED = {
    ('numpy.core.multiarray', '_reconstruct'): _np_core.multiarray._reconstruct,
    ('numpy._core.multiarray', '_reconstruct'): _np_core.multiarray._reconstruct,
    ('numpy.core.multiarray', 'scalar'): _np_core.multiarray.scalar,
    ('numpy._core.multiarray', 'scalar'): _np_core.multiarray.scalar,
    ('numpy', 'ndarray'): np.ndarray,
    ('numpy', 'dtype'): np.dtype,
    # Protocol-2 pickles written by Python 3 spell bytes as _codecs.encode(text, 'latin1').
    ('_codecs', 'encode'): codecs.encode,
  }

  def find_class(self, module, name):
    if (module, name) in self.ALLOWED:
      return self.ALLOWED[(module, name)]
    raise pickle.UnpicklingError(f'refusing to load {module}.{name}: only plain data and numpy arrays are allowed')


def restricted_load(path: str) -> dict:
  with open(path, 'rb') as f:
    return _RestrictedUnpickler(io.BytesIO(f.read()), encoding='bytes').load()


def _cifar_pickle(path: str, label_key: bytes):
  if not os.path.exists(path):
    raise DataNotFoundError(path)
  try:
    d = restricted_load(path)
    images = np.asarray(d[b'data'], np.uint8).reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
    labels = np.asarray(d[label_key], np.int32)
  except pickle.UnpicklingError as e:
    raise DataError(f'{path}: {e}') from None
  except Exception as e:  # noqa: BLE001 (a truncated or foreign pickle fails in many ways)
    raise DataError(f'{path}: not a CIFAR batch ({type(e).__name__}: {e}); get the file again') from None
  return np.ascontiguousarray(images), labels


def load_cifar10_py(directory: str):
  parts = [_cifar_pickle(os.path.join(directory, f'data_batch_{i}'), b'labels') for i in range(1, 6)]
  x_test, y_test = _cifar_pickle(os.path.join(directory, 'test_batch'), b'labels')
  return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts]), x_test, y_test


def load_cifar100_py(directory: str):
  return (
    *_cifar_pickle(os.path.join(directory, 'train'), b'fine_labels'),
    *_cifar_pickle(os.path.join(directory, 'test'), b'fine_labels'),
  )


def _local_candidates(name: str, data_dir: str):
  """(loader, directory) pairs to try, in order."""
  if name == 'fashion_mnist':
    return [(load_fashion_mnist_idx, d) for d in _fashion_mnist_dirs(data_dir)]
  if name == 'cifar10':
    return [
      (load_cifar_bin, os.path.join(data_dir, 'cifar-10-batches-bin')),
      (load_cifar10_py, os.path.join(data_dir, 'cifar-10-batches-py')),
    ]
  if name == 'cifar100':
    return [(load_cifar100_py, os.path.join(data_dir, 'cifar-100-python'))]
  return []


# The files a local copy is made of, by dataset (a folder holding some of them is a broken copy).
LOCAL_FILES = {
  'fashion_mnist': (
    'train-images-idx3-ubyte',
    'train-labels-idx1-ubyte',
    't10k-images-idx3-ubyte',
    't10k-labels-idx1-ubyte',
  ),
  'cifar10': tuple(f'data_batch_{i}{ext}' for ext in ('.bin', '') for i in range(1, 6))
  + ('test_batch.bin', 'test_batch'),
  'cifar100': ('train', 'test'),
}


def load_local(name: str, data_dir: str) -> tuple | None:
  """The first local copy found, as (arrays, directory), or None. A folder with some of the
  files but not all, or a file that cannot be read, is a DataError naming the file."""
  for loader, directory in _local_candidates(name, data_dir):
    try:
      return loader(directory), directory
    except DataNotFoundError as e:
      present = [
        f
        for f in LOCAL_FILES[name]
        if os.path.exists(os.path.join(directory, f)) or os.path.exists(os.path.join(directory, f + '.gz'))
      ]
      if present:
        raise DataError(
          f'{e}: missing, though {directory} holds {", ".join(present)}: get the whole copy again'
        ) from None
      continue
    except OSError as e:  # a file there that cannot be read: a folder in its place, its permissions
      raise DataError(
        f'{e.filename or directory}: cannot be read ({e.strerror}); fix it or get the file again'
      ) from None
  return None


# ---------------------------------------------------------------------------------
# tfds.


def _network_answers(host: str = 'storage.googleapis.com', timeout_s: float = 3.0) -> bool:
  """Whether a tfds download could start: a name lookup and one short connect."""
  try:
    with socket.create_connection((host, 443), timeout=timeout_s):
      return True
  except OSError:
    return False


def _tfds_builder(name: str, tfds_data_dir: str | None):
  import tensorflow_datasets as tfds  # noqa: PLC0415 (slow import, only when needed)

  return tfds.builder(name, data_dir=tfds_data_dir or None)


def load_tfds(name: str, tfds_data_dir: str | None, prepare: bool):
  """Both splits through tfds' random-access data source (no TensorFlow needed)."""
  builder = _tfds_builder(name, tfds_data_dir)
  if prepare:
    builder.download_and_prepare(file_format='array_record')

  def split(s):
    source = builder.as_data_source(split=s)
    examples = [source[i] for i in range(len(source))]
    images = np.stack([np.asarray(e['image'], np.uint8) for e in examples])
    labels = np.array([int(e['label']) for e in examples], np.int32)
    return images, labels

  return (*split('train'), *split('test'))


def _tfds_prepared(name: str, tfds_data_dir: str | None) -> bool:
  try:
    return bool(_tfds_builder(name, tfds_data_dir).is_prepared())
  except Exception as e:  # noqa: BLE001 (tfds missing or broken: fall back to local)
    logging.info('tfds unavailable for %s: %s', name, e)
    return False


# ---------------------------------------------------------------------------------
# Synthetic.


def make_synthetic(spec: SyntheticSpec):
  """Each class is a fixed coarse pattern (a random on/off 4x4 grid of blocks) plus noise.

  The blocks line up with a 4x4 patch grid, so the patch front end sees the class
  directly: a few dozen steps learn it, and a test can tell learning from chance.
  """
  rng = np.random.default_rng([spec.seed, STREAMS['synthetic']])
  size, blocks = spec.image_size, 4
  coarse = rng.random((spec.num_classes, blocks, blocks, spec.channels)) < 0.5
  reps = -(-size // blocks)
  prototypes = coarse.repeat(reps, 1).repeat(reps, 2)[:, :size, :size].astype(np.float32)

  def split(n):
    labels = rng.integers(0, spec.num_classes, n).astype(np.int32)
    images = prototypes[labels] + spec.noise * rng.standard_normal((n, size, size, spec.channels))
    return (np.clip(images, 0, 1) * 255).astype(np.uint8), labels

  return (*split(spec.num_train), *split(spec.num_test))


# ---------------------------------------------------------------------------------


def load_dataset(spec: DataSpec) -> Dataset:
  """Loads both splits of the spec's dataset (see the module docstring for the order)."""
  name, source, tfds_data_dir, download, synthetic = (
    spec.name,
    spec.source,
    spec.tfds_data_dir,
    spec.download,
    spec.synthetic,
  )
  if name == 'synthetic' or source == 'synthetic':
    if name != 'synthetic':  # random content in the named dataset's shape and classes
      info = DATASETS[name]
      synthetic = dataclasses.replace(
        synthetic, image_size=info.image_shape[0], channels=info.image_shape[2], num_classes=info.num_classes
      )
    return Dataset(name, 'synthetic', 'synthetic', *make_synthetic(synthetic), num_classes=synthetic.num_classes)

  data_dir = os.path.expanduser(spec.dir or DEFAULT_DATA_DIR)
  looked = []
  arrays = None
  if source == 'tfds':
    if not _tfds_prepared(name, tfds_data_dir) and not _network_answers():
      looked.append(f'tfds prepared copy (data_dir={tfds_data_dir or "tfds default"}); tfds download (no network)')
    else:
      arrays, where, kind = load_tfds(name, tfds_data_dir, prepare=True), f'tfds ({name})', 'tfds'
  if arrays is None and source == 'auto':
    looked.append(f'tfds prepared copy (data_dir={tfds_data_dir or "tfds default"})')
    if _tfds_prepared(name, tfds_data_dir):
      arrays, where, kind = load_tfds(name, tfds_data_dir, prepare=False), f'tfds ({name}, prepared)', 'tfds'
  if arrays is None and source in ('auto', 'local'):
    looked += [d for _, d in _local_candidates(name, data_dir)]
    found = load_local(name, data_dir)
    if found:
      arrays, where, kind = found[0], found[1], 'local'
  if arrays is None and source == 'auto':
    looked.append('tfds download' + ('' if download else ' (off: config.data.download=False)'))
    if download and _network_answers():
      arrays, where, kind = load_tfds(name, tfds_data_dir, prepare=True), f'tfds ({name}, downloaded)', 'tfds'
    elif download:
      looked[-1] += ' (no network)'
  if arrays is None:
    raise DataNotFoundError(_not_found_message(name, looked, data_dir))

  train_x, train_y, test_x, test_y = arrays
  info = DATASETS[name]
  if train_x.shape[1:] != info.image_shape or test_x.shape[1:] != info.image_shape:
    raise DataError(f'{name} from {where}: images {train_x.shape[1:]}, expected {info.image_shape}')
  return Dataset(name, where, kind, train_x, train_y, test_x, test_y, num_classes=info.num_classes)


def check_sizes(dataset: Dataset, info: DatasetInfo) -> Dataset:
  """The dataset, if each split holds as many images and labels as `info` says (a run's
  schedule is computed from those) and every label is a class; else a DataError."""
  for split, images, labels, expected in (
    ('train', dataset.train_images, dataset.train_labels, info.num_train),
    ('test', dataset.test_images, dataset.test_labels, info.num_test),
  ):
    if len(images) != expected or len(labels) != expected:
      raise DataError(
        f'{dataset.name} from {dataset.source}: the {split} split has {len(images)} images and {len(labels)} '
        f'labels, expected {expected} of each'
      )
    bad = (labels < 0) | (labels >= info.num_classes)
    if bad.any():
      raise DataError(
        f'{dataset.name} from {dataset.source}: {int(bad.sum())} {split} labels outside 0..{info.num_classes - 1} '
        f'(the first: {int(labels[bad][0])})'
      )
  return dataset


def _not_found_message(name: str, looked: list[str], data_dir: str) -> str:
  how = {
    'fashion_mnist': f'apt-get install dataset-fashion-mnist (files go to {DEBIAN_FASHION_MNIST}), '
    f'or put the four IDX files (train-images-idx3-ubyte.gz, ...) in {data_dir}',
    'cifar10': f'put cifar-10-batches-bin/ or cifar-10-batches-py/ in {data_dir} '
    '(cifar-10-binary.tar.gz from https://www.cs.toronto.edu/~kriz/cifar.html, unpacked), '
    'or run where tfds can download it',
    'cifar100': f'put cifar-100-python/ in {data_dir}, or run where tfds can download it',
  }[name]
  return f'dataset {name!r} not found. Looked in: ' + '; '.join(looked) + f'. To get it: {how}.'
