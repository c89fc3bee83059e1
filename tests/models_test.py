import jax
import jax.numpy as jnp
import numpy as np
import pytest

from g2g_jax import models


def test_patch_encoder_orders_features_patch_or_channel_major():
  # A 4x4 single-channel image, 2x2 grid of 2x2 patches; conv weights pick one pixel.
  image = jnp.arange(16, dtype=jnp.float32).reshape(1, 4, 4, 1)
  enc = models.PatchEncoder(grid=2, channels=2, order='patch_major')
  kernel = np.zeros((2, 2, 1, 2), np.float32)
  kernel[0, 0, 0, 0] = 1.0  # channel 0: top-left pixel of the patch
  kernel[1, 1, 0, 1] = 1.0  # channel 1: bottom-right pixel
  params = {'conv': {'kernel': jnp.asarray(kernel), 'bias': jnp.zeros(2)}}
  top_left = [0, 2, 8, 10]  # per patch, row-major patch order
  bottom_right = [5, 7, 13, 15]
  patch_major = enc.apply({'params': params}, image)
  np.testing.assert_array_equal(patch_major[0], np.stack([top_left, bottom_right], 1).reshape(-1))
  channel_major = models.PatchEncoder(grid=2, channels=2, order='channel_major').apply({'params': params}, image)
  np.testing.assert_array_equal(channel_major[0], top_left + bottom_right)


@pytest.mark.parametrize('shape', [(28, 28, 1), (32, 32, 3)])
def test_g2gnet_shapes_and_activations(shape):
  model = models.G2GNet(widths=(16, 8), num_classes=5, patch_grid=4, patch_channels=3)
  x = jnp.ones((2, *shape))
  params = model.init(jax.random.PRNGKey(0), x)['params']
  assert params['encoder']['conv']['kernel'].shape == (shape[0] // 4, shape[1] // 4, shape[2], 3)
  assert params['head']['hidden_0']['kernel'].shape == (48, 16)
  assert params['head']['output']['kernel'].shape == (8, 5)
  logits, acts = model.apply({'params': params}, x)
  assert logits.shape == (2, 5)
  assert [a.shape for a in acts] == [(2, 48), (2, 16), (2, 8)]
  assert all(bool(jnp.all(a >= 0)) for a in acts)  # all post-ReLU


def test_torch_init_is_uniform_within_inverse_sqrt_fan_in():
  model = models.MLPHead(widths=(256,), num_classes=2)
  params = model.init(jax.random.PRNGKey(0), jnp.ones((1, 100)))['params']
  k = np.asarray(params['hidden_0']['kernel'])
  assert np.abs(k).max() <= 0.1 and np.abs(k).max() > 0.099
