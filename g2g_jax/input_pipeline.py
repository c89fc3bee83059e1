"""What each step trains on: epoch orders, host batches, Hebbian batches, padded eval batches,
and the on-device preprocessing (scaling, augmentation).

Steps are counted as optimizer steps done: `batch(s)` is what step s + 1 trains on, and
`latest(s, k)` the k batches trained on just before step s. Every replica (seed) shuffles
the training set with its own order, drawn on the host from its seed and the epoch, so a
resumed run sees exactly the batches an uninterrupted one would.
"""

import functools
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from g2g_jax.state import STREAMS


def epoch_order(seed: int, epoch: int, n: int) -> np.ndarray:
  """The order in which a run of this seed visits the n training examples in this epoch."""
  return np.random.default_rng([seed, STREAMS['shuffle'], epoch]).permutation(n)


class TrainBatches:
  """Host batches of uint8 images and labels, for one replica or stacked over several."""

  def __init__(self, images: np.ndarray, labels: np.ndarray, batch_size: int, seeds: Sequence[int]):
    self.images, self.labels, self.batch_size, self.seeds = images, labels, batch_size, tuple(seeds)
    self.steps_per_epoch = len(images) // batch_size
    self.stacked = len(self.seeds) > 1  # a leading seed axis; one seed has none

  @functools.lru_cache(maxsize=2)  # noqa: B019 (one per run; holds the current and next epoch's orders)
  def orders(self, epoch: int) -> np.ndarray:
    """[seeds, examples] (one seed: [examples]): each replica's order of the training set."""
    orders = np.stack([epoch_order(seed, epoch, len(self.images)) for seed in self.seeds])
    return orders if self.stacked else orders[0]

  def indices(self, step: int) -> np.ndarray:
    """The examples optimizer step `step` + 1 trains on: [(seeds,) batch]."""
    epoch, i = divmod(step, self.steps_per_epoch)
    return self.orders(epoch)[..., i * self.batch_size : (i + 1) * self.batch_size]

  def batch(self, step: int) -> dict:
    """The host batch optimizer step `step` + 1 trains on: [(seeds,) batch, ...]."""
    idx = self.indices(step)
    return {'image': self.images[idx], 'label': self.labels[idx]}

  def device_batch(self, step: int, sharding) -> dict:
    """batch(step) as global arrays placed by `sharding`. Each process gathers only the rows
    of the devices it drives (the whole batch, with one process)."""
    idx = self.indices(step)

    def place(array):
      def rows(index):  # index: a slice per dimension of the global batch
        return array[idx[index[: idx.ndim]]][(slice(None),) * idx.ndim + tuple(index[idx.ndim :])]

      shape = (*idx.shape, *array.shape[1:])
      shards = sharding.addressable_devices_indices_map(shape).items()
      return jax.make_array_from_single_device_arrays(shape, sharding, [jax.device_put(rows(i), d) for d, i in shards])

    return {'image': place(self.images), 'label': place(self.labels)}

  def latest(self, step: int, k: int) -> dict:
    """The (up to) k batches trained on before step `step`: [(seeds,) k, batch, ...]."""
    batches = [self.batch(s) for s in range(max(step - k, 0), step)]
    return jax.tree.map(lambda *xs: np.stack(xs, axis=1 if self.stacked else 0), *batches)


def eval_batches(images: np.ndarray, labels: np.ndarray, batch_size: int):
  """A split in host batches of batch_size examples; the last is padded with weight 0."""
  for start in range(0, len(images), batch_size):
    x, y = images[start : start + batch_size], labels[start : start + batch_size]
    pad = batch_size - len(x)
    weight = np.concatenate([np.ones(len(x), np.float32), np.zeros(pad, np.float32)])
    if pad:
      x = np.concatenate([x, np.zeros((pad, *x.shape[1:]), x.dtype)])
      y = np.concatenate([y, np.zeros(pad, y.dtype)])
    yield {'image': x, 'label': y, 'weight': weight}


# ---------------------------------------------------------------------------------
# On the device, inside the jitted steps.


def to_float(images_u8: jax.Array) -> jax.Array:
  return images_u8.astype(jnp.float32) / 255.0


def random_crop_flip(key: jax.Array, images: jax.Array, padding: int) -> jax.Array:
  """Random crop back to size from a zero-padded image, and a random horizontal flip."""
  b, h, w, _ = images.shape
  k_crop, k_flip = jax.random.split(key)
  padded = jnp.pad(images, ((0, 0), (padding, padding), (padding, padding), (0, 0)))
  offsets = jax.random.randint(k_crop, (b, 2), 0, 2 * padding + 1)

  def crop(img, off):
    return jax.lax.dynamic_slice(img, (off[0], off[1], 0), (h, w, img.shape[-1]))

  cropped = jax.vmap(crop)(padded, offsets)
  flip = jax.random.bernoulli(k_flip, 0.5, (b,))
  return jnp.where(flip[:, None, None, None], cropped[:, :, ::-1], cropped)


def preprocess(key: jax.Array, images_u8: jax.Array, augment: str, padding: int) -> jax.Array:
  """uint8 images to float [0, 1], augmented when training ('crop_flip' or 'none')."""
  images = to_float(images_u8)
  if augment == 'crop_flip':
    images = random_crop_flip(key, images, padding)
  return images
