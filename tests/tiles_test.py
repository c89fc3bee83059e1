import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import final_state
from g2g_jax import connectivity as conn
from g2g_jax import rewiring, tiles, train
from g2g_jax.config import ConfigError, parse_config
from g2g_jax.models import MLPHead


def spec(**kw):
  base = {'kind': 'g2g', 'grouping': 'index', 'num_groups': 4, 'p_intra': 1.0, 'p_inter': 0.25}
  base['sparse_kernels'] = 'hidden_*/kernel'  # an MLPHead on its own
  return conn.ConnectivitySpec(**{**base, 'inter': 'tiles', 'tile_size': 4, **kw})


@pytest.mark.parametrize('n_in,n_out', [(32, 32), (32, 64)])
def test_layout_is_regular_and_respects_groups(n_in, n_out):
  s = spec(p_inter=0.5)
  layout, mask = conn.make_layout(n_in, n_out, 1, s, seed=3)
  idx, rev = layout['idx'], layout['rev']
  s_in, s_out = n_in // 16, n_out // 16  # tiles per group
  k_inter = round(0.5 * 3 * s_in)
  assert idx.shape == (n_out // 4, s_in + k_inter) and mask.shape == (n_out // 4, 4, s_in + k_inter, 4)
  for c, row in enumerate(idx):
    assert len(set(row)) == len(row)  # no tile twice
    own = c // s_out
    np.testing.assert_array_equal(row[:s_in] // s_in, own)  # all of its own group first
    assert np.all(row[s_in:] // s_in != own)  # then other groups only
  np.testing.assert_array_equal(layout['intra'], np.broadcast_to(np.arange(idx.shape[1]) < s_in, idx.shape))
  counts = np.bincount(idx.ravel(), minlength=n_in // 4)
  assert counts.min() == counts.max() == rev.shape[1]  # every input tile read equally often
  for r in range(n_in // 4):
    np.testing.assert_array_equal(idx.ravel()[rev[r]], r)


def test_group_sized_tiles_for_a_widening_layer():
  s = spec(num_groups=8, p_inter=0.15, tile_size=0)
  plan = conn.plan_layer(512, 4096, 0, s)
  assert (plan.tile_in, plan.tile_out, plan.num_intra, plan.num_slots) == (64, 512, 1, 2)  # round(0.15 * 7) = 1
  layout, mask = conn.make_layout(512, 4096, 0, s, 0)
  assert mask.shape == (8, 512, 2, 64) and mask.mean() == 1.0  # [C, tile_out, K, tile_in]
  assert tiles.to_dense(mask, layout, 512, 4096).mean() == pytest.approx(2 / 8)


def test_p_inter_zero_is_block_diagonal():
  layout, mask = conn.make_layout(32, 32, 0, spec(p_inter=0.0), seed=0)
  g = conn.contiguous_groups(32, 4)
  np.testing.assert_array_equal(tiles.to_dense(mask, layout, 32, 32), g[:, None] == g[None, :])


def test_density_matches_the_bernoulli_layer_up_to_rounding():
  s = spec(num_groups=8, p_inter=0.15, tile_size=32, p_intra=0.5)
  _, mask = conn.make_layout(1024, 1024, 1, s, seed=0)
  k_inter = mask.shape[2] - 4  # 4 tiles per input group of 128
  assert k_inter == round(0.15 * 7 * 4) == 4
  expected = (4 * 32 * 0.5 + k_inter * 32) / 1024  # p' rounds from 0.15 to 4 / 28 here
  assert mask.sum() / (1024 * 1024) == pytest.approx(expected, abs=0.002)
  _, half = conn.make_layout(1024, 1024, 1, spec(num_groups=8, p_inter=0.15, tile_size=32, tile_density=0.5), 0)
  assert half.shape[2] - 4 == round(0.15 * 7 * 4 / 0.5) == 8  # twice the tiles at half density
  assert half[:, :, 4:].mean() == pytest.approx(0.5, abs=0.01)


@pytest.mark.parametrize('grouping', ['index', 'mixer', 'random'])
def test_tiled_layer_equals_masked_dense_layer(grouping):
  s = spec(grouping=grouping, p_intra=0.8, tile_density=0.7)
  sizes = [32, 64, 64]
  plans = tuple(conn.plan_layer(a, b, k, s) for k, (a, b) in enumerate(zip(sizes[:-1], sizes[1:], strict=True)))
  # Layer 1 exercises each way of putting neurons in group order (the mixer's odd layers
  # are interleaved: a transpose; random groups need a gather).
  expected = {'index': 'none', 'mixer': 'interleave', 'random': 'gather'}[grouping]
  assert (plans[1].permute_in, plans[1].permute_out) == (expected, expected)
  tiled, dense = MLPHead((64, 64), 10, tile_plans=plans), MLPHead((64, 64), 10)
  x = jax.random.uniform(jax.random.PRNGKey(1), (5, 32))
  v = tiled.init(jax.random.PRNGKey(0), x)
  masks, layout = conn.make_masks_and_layout(v['params'], v['layout'], s, 0)
  params = jax.tree.map(lambda p, m: p if m is None else jnp.where(m, p, 0), v['params'], masks)
  as_dense = dict(params)
  for k in range(2):
    kernel = tiles.to_dense(params[f'hidden_{k}']['kernel'], layout[f'hidden_{k}'], sizes[k], sizes[k + 1])
    as_dense[f'hidden_{k}'] = {'kernel': jnp.asarray(kernel), 'bias': params[f'hidden_{k}']['bias']}

  def loss(model, variables, x):
    return jnp.sum(model.apply(variables, x) ** 2)

  lt, (gt, gx_t) = jax.value_and_grad(lambda p, x: loss(tiled, {'params': p, 'layout': layout}, x), (0, 1))(params, x)
  ld, (gd, gx_d) = jax.value_and_grad(lambda p, x: loss(dense, {'params': p}, x), (0, 1))(as_dense, x)
  np.testing.assert_allclose(lt, ld, rtol=1e-5)
  np.testing.assert_allclose(gx_t, gx_d, rtol=1e-4, atol=1e-6)
  for k in range(2):
    lay = layout[f'hidden_{k}']
    present = tiles.to_dense(np.ones(masks[f'hidden_{k}']['kernel'].shape, bool), lay, sizes[k], sizes[k + 1])
    g_from_tiles = tiles.to_dense(gt[f'hidden_{k}']['kernel'], lay, sizes[k], sizes[k + 1])
    np.testing.assert_allclose(
      g_from_tiles[present], np.asarray(gd[f'hidden_{k}']['kernel'])[present], rtol=1e-4, atol=1e-6
    )
  # The activity the Hebbian rule reads (layer_activity) comes back [batch, neurons], in
  # neuron order, though tiled layers compute feature-major.
  paths = [('hidden_0', 'kernel'), ('hidden_1', 'kernel')]
  acts_t = rewiring.layer_activity(tiled.apply, {'params': params, 'layout': layout}, x, paths)
  acts_d = rewiring.layer_activity(dense.apply, {'params': as_dense}, x, paths)
  for p in paths:
    for a_t, a_d in zip(acts_t[p], acts_d[p], strict=True):
      np.testing.assert_allclose(a_t, a_d, rtol=1e-5, atol=1e-6)
  # A TiledDense used on its own takes and returns [..., neurons], like nn.Dense.
  layer = tiles.TiledDense(64, plans[1])
  v1 = {'params': params['hidden_1'], 'layout': layout['hidden_1']}
  h = acts_t[paths[1]][0]
  np.testing.assert_allclose(
    layer.apply(v1, h), h @ as_dense['hidden_1']['kernel'] + params['hidden_1']['bias'][None], rtol=1e-5, atol=1e-6
  )
  fm = tiles.TiledDense(64, plans[1], feature_major=True)
  np.testing.assert_allclose(fm.apply(v1, h.T), layer.apply(v1, h).T, rtol=1e-6)
  h3 = h.reshape(5, 1, 64)  # leading axes, as a Mixer's token MLP has
  np.testing.assert_allclose(layer.apply(v1, h3)[:, 0], layer.apply(v1, h), rtol=1e-6)
  score = jax.random.uniform(jax.random.PRNGKey(2), (32, 64))
  blocks = tiles.to_blocks(score, layout['hidden_0'], 4, 4)
  present0 = tiles.to_dense(np.ones(blocks.shape, bool), layout['hidden_0'], 32, 64)
  np.testing.assert_allclose(tiles.to_dense(blocks, layout['hidden_0'], 32, 64)[present0], np.asarray(score)[present0])


def test_moving_tiles_changes_an_index_array_without_retrace():
  s = spec(p_inter=0.5)
  plan = conn.plan_layer(32, 32, 0, s)
  model = MLPHead((32,), 3, tile_plans=(plan,))
  x = jax.random.uniform(jax.random.PRNGKey(1), (2, 32))
  v = model.init(jax.random.PRNGKey(0), x)
  _, layout = conn.make_masks_and_layout(v['params'], v['layout'], s, 0)

  @jax.jit
  @chex.assert_max_traces(n=1)
  def apply(params, layout, x):
    return model.apply({'params': params, 'layout': layout}, x)

  apply(v['params'], layout, x)
  moved, _ = conn.make_layout(32, 32, 0, s, seed=7)  # another draw of the inter tiles
  assert not np.array_equal(moved['idx'], np.asarray(layout['hidden_0']['idx']))
  new_layout = {'hidden_0': {k: jnp.asarray(v_) for k, v_ in moved.items()}}
  out = apply(v['params'], new_layout, x)
  dense_kernel = tiles.to_dense(v['params']['hidden_0']['kernel'], moved, 32, 32)
  hidden = jax.nn.relu(x @ dense_kernel + v['params']['hidden_0']['bias'][None, :])
  expected = hidden @ v['params']['output']['kernel'] + v['params']['output']['bias'][None, :]
  np.testing.assert_allclose(out, expected, rtol=1e-5)
  assert apply._cache_size() == 1


def tiles_config(config):
  config.connectivity.inter = 'tiles'
  config.connectivity.tile_size = 8
  config.connectivity.tile_density = 0.5
  config.model.hidden_width = 64
  return config


def test_tiles_config_errors(smoke_config):
  tiles_config(smoke_config)
  smoke_config.connectivity.tile_size = 5
  with pytest.raises(ConfigError, match='config.connectivity.tile_size = 5: does not tile hidden_0'):
    parse_config(smoke_config, device_count=4)
  smoke_config.connectivity.tile_size = 8
  smoke_config.connectivity.kind = 'er'
  with pytest.raises(ConfigError, match="config.connectivity.inter = 'tiles': needs connectivity.kind = 'g2g'"):
    parse_config(smoke_config, device_count=4)


def test_smoke_run_on_tiles_with_rewiring(smoke_config, tmp_path):
  tiles_config(smoke_config)
  smoke_config.rewiring.prune = 'magnitude'
  smoke_config.rewiring.grow = 'hebbian'
  smoke_config.rewiring.rewire_every_steps = 4
  result = train.train_and_evaluate(smoke_config, str(tmp_path))
  assert result['test_accuracy'] > 0.2
  initial, final = train.make_train_state(smoke_config), final_state(smoke_config, str(tmp_path))
  for k in range(3):
    m0, m1 = (
      initial.sparsity.masks['head'][f'hidden_{k}']['kernel'],
      final.sparsity.masks['head'][f'hidden_{k}']['kernel'],
    )
    assert m0.ndim == 4 and int(m0.sum()) == int(m1.sum()) and bool(jnp.any(m0 != m1))
    assert bool(jnp.all(jnp.where(m1, 0.0, final.params['head'][f'hidden_{k}']['kernel']) == 0))
