import jax
import jax.numpy as jnp
import numpy as np

from g2g_jax import input_pipeline


def test_batches_follow_each_seeds_epoch_order_with_one_step_convention():
  images = np.arange(20, dtype=np.uint8)[:, None, None, None]
  labels = np.arange(20, dtype=np.int32)
  one = input_pipeline.TrainBatches(images, labels, batch_size=4, seeds=[7])
  assert one.steps_per_epoch == 5
  order0, order1 = input_pipeline.epoch_order(7, 0, 20), input_pipeline.epoch_order(7, 1, 20)
  np.testing.assert_array_equal(one.batch(0)['label'], order0[:4])  # what step 1 trains on
  np.testing.assert_array_equal(one.batch(6)['label'], order1[4:8])  # step 7: the second batch of epoch 2
  latest = one.latest(6, 3)  # the batches of steps 4, 5 and 6 (step 6 opens epoch 2)
  np.testing.assert_array_equal(latest['label'], np.stack([order0[12:16], order0[16:20], order1[:4]]))
  assert one.latest(1, 3)['label'].shape == (1, 4)  # fewer before the start
  two = input_pipeline.TrainBatches(images, labels, batch_size=4, seeds=[7, 8])
  b = two.batch(0)['label']
  assert b.shape == (2, 4)
  np.testing.assert_array_equal(b[0], order0[:4])
  np.testing.assert_array_equal(b[1], input_pipeline.epoch_order(8, 0, 20)[:4])
  assert two.latest(6, 3)['label'].shape == (2, 3, 4)  # [seeds, k, batch]


def test_eval_batches_pad_the_last_with_weight_zero():
  images = np.ones((5, 2, 2, 1), np.uint8)
  out = list(input_pipeline.eval_batches(images, np.arange(5, dtype=np.int32), 2))
  assert [b['image'].shape[0] for b in out] == [2, 2, 2]
  np.testing.assert_array_equal(out[-1]['weight'], [1, 0])


def test_random_crop_flip_shifts_and_flips():
  image = jnp.arange(16, dtype=jnp.float32).reshape(1, 4, 4, 1) + 1
  images = jnp.repeat(image, 64, 0)
  out = input_pipeline.random_crop_flip(jax.random.PRNGKey(0), images, padding=1)
  assert out.shape == images.shape
  # Every output is a shifted (by at most 1) and possibly mirrored copy of the input.
  padded = np.pad(np.asarray(image[0, ..., 0]), 1)
  candidates = [padded[i : i + 4, j : j + 4] for i in range(3) for j in range(3)]
  candidates += [c[:, ::-1] for c in candidates]
  for o in np.asarray(out[..., 0]):
    assert any(np.array_equal(o, c) for c in candidates)
  assert len({np.asarray(o).tobytes() for o in out}) > 4  # not the same crop every time
  same = input_pipeline.random_crop_flip(jax.random.PRNGKey(0), images, padding=1)
  np.testing.assert_array_equal(out, same)
