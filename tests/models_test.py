import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util

from g2g_jax import connectivity as conn
from g2g_jax import models, rewiring


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
def test_g2gnet_shapes_and_the_activity_the_hebbian_rule_reads(shape):
  model = models.G2GNet(widths=(16, 8), num_classes=5, patch_grid=4, patch_channels=3)
  x = jnp.ones((2, *shape))
  params = model.init(jax.random.PRNGKey(0), x)['params']
  assert params['encoder']['conv']['kernel'].shape == (shape[0] // 4, shape[1] // 4, shape[2], 3)
  assert params['head']['hidden_0']['kernel'].shape == (48, 16)
  assert params['head']['output']['kernel'].shape == (8, 5)
  assert model.apply({'params': params}, x).shape == (2, 5)
  paths = [('head', 'hidden_0', 'kernel'), ('head', 'hidden_1', 'kernel')]
  acts = rewiring.layer_activity(model.apply, {'params': params}, x, paths)
  assert [(pre.shape, post.shape) for pre, post in acts.values()] == [((2, 48), (2, 16)), ((2, 16), (2, 8))]
  np.testing.assert_array_equal(acts[paths[0]][1], acts[paths[1]][0])  # one layer's output feeds the next
  assert all(bool(jnp.all(a >= 0)) for pair in acts.values() for a in pair)  # all post-ReLU


def test_mixer_sparse_layers_are_its_mlp_kernels_in_natural_order():
  spec = models.MixerSpec(patch_grid=8, mixer_blocks=2, mixer_channels=32)
  model = spec.build(conn.ConnectivitySpec(sparse_kernels=models.MixerSpec.SPARSE_KERNELS))
  params = model.init(jax.random.PRNGKey(0), jnp.ones((2, 32, 32, 3)))['params']
  layers = spec.sparse_layers()
  assert [p for p, _, _ in layers] == [
    '/'.join(p) for p in conn.sparse_layer_paths(params, 'block_*/*_mlp/Dense_*/kernel')
  ]
  assert layers[:2] == [
    ('block_0/channel_mlp/Dense_0/kernel', 32, 256),
    ('block_0/channel_mlp/Dense_1/kernel', 256, 32),
  ]
  assert layers[2] == ('block_0/token_mlp/Dense_0/kernel', 64, 64)  # 8 x 8 tokens
  flat = {'/'.join(k): v for k, v in traverse_util.flatten_dict(params).items()}
  assert all(flat[p].shape == (a, b) for p, a, b in layers)
  assert model.apply({'params': params}, jnp.ones((2, 32, 32, 3))).shape == (2, 10)


def test_torch_init_is_uniform_within_inverse_sqrt_fan_in():
  model = models.MLPHead(widths=(256,), num_classes=2)
  params = model.init(jax.random.PRNGKey(0), jnp.ones((1, 100)))['params']
  k = np.asarray(params['hidden_0']['kernel'])
  assert np.abs(k).max() <= 0.1 and np.abs(k).max() > 0.099


def test_the_mixers_own_layers_equal_the_flax_layers_they_stand_for():
  x = jax.random.uniform(jax.random.PRNGKey(1), (3, 32, 32, 3))
  conv = nn.Conv(16, (4, 4), strides=(4, 4), padding='VALID')
  stem = models.PatchStem(16, grid=8)
  v = conv.init(jax.random.PRNGKey(0), x)
  assert jax.tree.map(jnp.shape, v) == jax.tree.map(jnp.shape, stem.init(jax.random.PRNGKey(0), x))
  want = conv.apply(v, x).reshape(3, 64, 16).transpose(1, 0, 2)  # [tokens, B, channels]
  np.testing.assert_allclose(stem.apply(v, x), want, rtol=1e-5, atol=1e-6)
  h = jax.random.normal(jax.random.PRNGKey(2), (64, 5))  # [tokens, N]
  dense, dense_t = nn.Dense(8), models.DenseT(8)
  v = dense.init(jax.random.PRNGKey(0), h.T)
  assert jax.tree.map(jnp.shape, v) == jax.tree.map(jnp.shape, dense_t.init(jax.random.PRNGKey(0), h))
  np.testing.assert_allclose(dense_t.apply(v, h), dense.apply(v, h.T).T, rtol=1e-5, atol=1e-6)
