"""g2g_jax.sparse, the library face: the README's example as written, and TiledDense inside
the MLP-Mixer against the masked layer."""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import traverse_util

from conftest import readme_example
from g2g_jax import connectivity as conn
from g2g_jax import models, rewiring, sparse, tiles


def test_the_readme_example_keeps_density_exact_and_pruned_weights_zero_across_rewiring():
  code = readme_example(0)
  assert len([line for line in code.splitlines() if line.strip()]) <= 45
  namespace = {}
  exec(compile(code, 'README.md', 'exec'), namespace)  # noqa: S102 (the README's own code, run as a user would)
  params, sparsity, info = namespace['params'], namespace['sparsity'], namespace['info']
  initial = namespace['sparse'].sparsify(
    namespace['model'].init(namespace['key'], namespace['x'])['params'], namespace['spec'], seed=0
  )[1]
  assert set(info) == {'hidden_0', 'hidden_1'} and all(int(v['pruned']) > 0 for v in info.values())
  for k in range(2):
    m0 = np.asarray(initial.masks[f'hidden_{k}']['kernel'])
    m1 = np.asarray(sparsity.masks[f'hidden_{k}']['kernel'])
    assert m1.sum() == m0.sum() == sparsity.active_edges[k]  # density exactly constant
    assert not np.array_equal(m0, m1)  # five updates moved edges
    assert np.all(np.asarray(params[f'hidden_{k}']['kernel'])[~m1] == 0)  # pruned weights exactly 0
  assert sparsity.masks['out']['kernel'] is None


def test_tiled_dense_inside_the_mixer_equals_the_masked_layer():
  spec = conn.ConnectivitySpec(
    grouping='mixer',
    num_groups=4,
    p_inter=0.25,
    inter='tiles',
    tile_density=0.5,
    sparse_kernels=models.MixerSpec.SPARSE_KERNELS,
  )
  model_spec = models.MixerSpec(
    patch_grid=8, mixer_blocks=1, mixer_channels=32, mixer_tokens_mlp=16, mixer_channels_mlp=64
  )
  tiled = model_spec.build(spec)
  masked = model_spec.build(conn.ConnectivitySpec(**{**spec.__dict__, 'inter': 'bernoulli'}))
  x = jax.random.uniform(jax.random.PRNGKey(1), (3, 32, 32, 3))
  v = tiled.init(jax.random.PRNGKey(0), x)
  params, sparsity = sparse.sparsify(v['params'], spec, seed=0, layout=v['layout'])
  layers = model_spec.sparse_layers()
  assert len(layers) == 4
  flat_p, flat_l = traverse_util.flatten_dict(params), traverse_util.flatten_dict(sparsity.layout)
  dense_params = dict(flat_p)
  for path, n_in, n_out in layers:
    key = tuple(path.split('/'))
    layout = {name: flat_l[(*key[:-1], name)] for name in ('idx', 'in_order', 'out_order')}
    dense_params[key] = jnp.asarray(tiles.to_dense(flat_p[key], layout, n_in, n_out))
  dense_params = traverse_util.unflatten_dict(dense_params)

  def loss(model, variables):
    return jnp.sum(model.apply(variables, x) ** 2)

  lt, gt = jax.value_and_grad(lambda p: loss(tiled, {'params': p, 'layout': sparsity.layout}))(params)
  ld, gd = jax.value_and_grad(lambda p: loss(masked, {'params': p}))(dense_params)
  np.testing.assert_allclose(lt, ld, rtol=1e-5)
  flat_gt, flat_gd = traverse_util.flatten_dict(gt), traverse_util.flatten_dict(gd)
  for key in flat_gt:
    path = '/'.join(key)
    if any(path == p for p, _, _ in layers):
      n_in, n_out = next((a, b) for p, a, b in layers if p == path)
      layout = {name: flat_l[(*key[:-1], name)] for name in ('idx', 'in_order', 'out_order')}
      present = tiles.to_dense(np.ones(flat_gt[key].shape, bool), layout, n_in, n_out)
      from_tiles = tiles.to_dense(np.asarray(flat_gt[key]), layout, n_in, n_out)
      np.testing.assert_allclose(from_tiles[present], np.asarray(flat_gd[key])[present], rtol=1e-4, atol=1e-6)
    else:
      np.testing.assert_allclose(flat_gt[key], flat_gd[key], rtol=1e-4, atol=1e-6, err_msg=path)
  # Rewiring reads the tiled layers' activity by interception, as it reads Dense layers'.
  rspec = sparse.RewireSpec(prune='magnitude', grow='hebbian', fraction=0.2)
  tx = __import__('optax').adam(1e-3)
  update = functools.partial(
    sparse.rewire, spec=rspec, tx=tx, step=0, apply_fn=tiled.apply, inputs=lambda b: b, loss_fn=None
  )
  new_params, _, new_sparsity, info = jax.jit(update)(params, tx.init(params), sparsity, x[None], jax.random.PRNGKey(3))
  for path, _, _ in layers:
    key = tuple(path.split('/'))
    m0 = np.asarray(traverse_util.flatten_dict(sparsity.masks)[key])
    m1 = np.asarray(traverse_util.flatten_dict(new_sparsity.masks)[key])
    assert m0.sum() == m1.sum() and not np.array_equal(m0, m1)
    assert np.all(np.asarray(traverse_util.flatten_dict(new_params)[key])[~m1] == 0)
  assert set(info) == {'/'.join(p.split('/')[1:-1]) for p, _, _ in layers}  # names less the shared block_0


def test_layer_activity_flattens_leading_axes():
  layer = models.MlpBlock(8)
  x = jax.random.uniform(jax.random.PRNGKey(0), (2, 3, 4))
  v = layer.init(jax.random.PRNGKey(1), x)
  acts = rewiring.layer_activity(layer.apply, v, x, [('Dense_0', 'kernel'), ('Dense_1', 'kernel')])
  pre, post = acts[('Dense_0', 'kernel')]
  assert pre.shape == (6, 4) and post.shape == (6, 8)
  dense = v['params']['Dense_0']
  np.testing.assert_allclose(post, jax.nn.relu(x.reshape(6, 4) @ dense['kernel'] + dense['bias'][None]), rtol=1e-5)


def test_sparsify_refuses_what_it_cannot_make_sparse_naming_the_path_size_and_rule():
  class TwoLayers(nn.Module):
    @nn.compact
    def __call__(self, x):
      return nn.Dense(6, name='b')(nn.Dense(30, name='a')(x))

  params = TwoLayers().init(jax.random.PRNGKey(0), jnp.ones((1, 16)))['params']
  cases = [
    ('', 4, "sparse_kernels is '': name the kernels"),
    ('nope/*', 4, r"sparse_kernels = 'nope/\*' matches no param; kernels: \['a/kernel', 'b/kernel'\]"),
    ('*/bias', 4, r'a/bias: shape \(30,\) matched ConnectivitySpec.sparse_kernels, but only a kernel \[in, out\]'),
    ('a/kernel', 4, r'a/kernel: its output size 30 must be a multiple of ConnectivitySpec.num_groups \(4\)'),
    ('b/kernel', 8, r'b/kernel: its input size 30 must be a multiple of ConnectivitySpec.num_groups \(8\)'),
    ('*/kernel', 32, r'a/kernel: its input size 16 must be a multiple of ConnectivitySpec.num_groups \(32\)'),
  ]
  for pattern, groups, message in cases:
    with pytest.raises(ValueError, match=message):
      sparse.sparsify(params, sparse.ConnectivitySpec(sparse_kernels=pattern, num_groups=groups), seed=0)
  # ER needs no groups: any width
  _, sparsity = sparse.sparsify(params, sparse.ConnectivitySpec(kind='er', sparse_kernels='*/kernel', num_groups=7), 0)
  assert sparsity.groups is None and len(sparsity.active_edges) == 2


def test_rewiring_refuses_what_it_cannot_do():
  with pytest.raises(ValueError, match=r"fraction_schedule = 'cosine' decays .* rewire_end_steps, which is 0"):
    sparse.RewireSpec(prune='magnitude', grow='random', fraction_schedule='cosine')
  model = nn.Dense(8)
  params = model.init(jax.random.PRNGKey(0), jnp.ones((1, 8)))['params']
  full = sparse.ConnectivitySpec(num_groups=2, p_inter=1.0, sparse_kernels='kernel')  # every edge present
  params, sparsity = sparse.sparsify(params, full, seed=0)
  spec = sparse.RewireSpec(prune='magnitude', grow='random')
  tx = optax.adam(1e-3)
  with pytest.raises(ValueError, match='kernel: all 64 edges are present, so none can grow'):
    sparse.rewire(
      params,
      tx.init(params),
      sparsity,
      jnp.ones((1, 2, 8)),
      jax.random.PRNGKey(0),
      spec=spec,
      tx=tx,
      step=0,
      apply_fn=model.apply,
      inputs=lambda b: b,
    )
