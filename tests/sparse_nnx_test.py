"""g2g_jax.sparse_nnx, the NNX face: the README's example as written, the masks as their own
variables through optimizers, transforms and checkpoints, every rewiring criterion, tiles."""

import functools
import itertools
import tempfile

import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp
import pytest
from flax import nnx

from conftest import readme_example
from g2g_jax import connectivity as conn
from g2g_jax import rewiring, sparse_nnx, tiles
from g2g_jax.sparse_nnx import ConnectivitySpec, RewireSpec


def masks_of(model) -> dict:
  return {'/'.join(map(str, p)): np.asarray(v.get_value()) for p, v in nnx.state(model, sparse_nnx.Mask).flat_state()}


def test_the_readme_example_keeps_density_exact_and_pruned_weights_zero_across_rewiring_and_a_restore():
  code = readme_example(1)
  assert len([line for line in code.splitlines() if line.strip()]) <= 40
  namespace = {}
  exec(compile(code, 'README.md', 'exec'), namespace)  # noqa: S102 (the README's own code, run as a user would)
  model, restored, info = namespace['model'], namespace['restored'], namespace['info']
  fresh = namespace['MLP'](nnx.Rngs(0))
  sparse_nnx.sparsify(fresh, namespace['spec'], seed=0)
  before, after = masks_of(fresh), masks_of(model)
  assert set(after) == {'hidden/0/kernel_mask', 'hidden/1/kernel_mask'} and all(
    int(v['pruned']) > 0 for v in info.values()
  )
  for name, m1 in after.items():
    assert m1.sum() == before[name].sum() and not np.array_equal(m1, before[name])  # moved, density kept
    np.testing.assert_array_equal(masks_of(restored)[name], m1)
  for m in (model, restored):
    for layer in m.hidden:
      kernel, mask = np.asarray(layer.kernel.get_value()), np.asarray(layer.kernel_mask.get_value())
      assert np.all(kernel[~mask] == 0) and np.any(kernel[mask] != 0)
  np.testing.assert_array_equal(
    np.asarray(restored.hidden[1].kernel.get_value()), np.asarray(model.hidden[1].kernel.get_value())
  )


class MLP(nnx.Module):
  def __init__(self, rngs, tiled_plan=None):
    self.hidden = nnx.List([nnx.Linear(16, 32, rngs=rngs), nnx.Linear(32, 32, rngs=rngs)])
    self.out = nnx.Linear(32, 4, rngs=rngs)

  def __call__(self, x):
    for layer in self.hidden:
      x = nnx.relu(layer(x))
    return self.out(x)


SPEC = ConnectivitySpec(num_groups=4, p_inter=0.25, sparse_kernels='hidden/*/kernel')


def loss_fn(model, batch):
  return optax.softmax_cross_entropy_with_integer_labels(model(batch['x']), batch['y']).mean()


def batch(seed=1):
  x = jax.random.normal(jax.random.PRNGKey(seed), (64, 16))
  return {'x': x, 'y': (x[:, 0] > 0).astype(jnp.int32)}


@nnx.jit
def train_step(model, optimizer, b):
  optimizer.update(model, sparse_nnx.masked(nnx.grad(loss_fn)(model, b), model))
  sparse_nnx.zero_pruned(model)


def test_the_optimizer_never_updates_the_masks_and_transforms_carry_them():
  model = MLP(nnx.Rngs(0))
  assert sparse_nnx.sparsify(model, SPEC, seed=0) == ['hidden/0/kernel', 'hidden/1/kernel']
  masks = masks_of(model)
  optimizer = nnx.Optimizer(model, optax.adam(1e-2), wrt=nnx.Param)
  assert not nnx.state(optimizer, sparse_nnx.Mask)  # no optimizer state for a Mask
  for _ in range(3):
    train_step(model, optimizer, batch())
  for name, m in masks_of(model).items():
    np.testing.assert_array_equal(m, masks[name])
  graphdef, state = nnx.split(model)

  def forward(s, x):
    return nnx.merge(graphdef, s)(x)

  x = batch()['x']
  want = model(x)
  np.testing.assert_allclose(jax.jit(forward)(state, x), want, rtol=1e-6)
  np.testing.assert_allclose(jax.vmap(forward, in_axes=(None, 0))(state, x[:, None])[:, 0], want, rtol=1e-5)
  stacked = jax.tree.map(lambda a: jnp.stack([a, a]), state)  # scan over two copies of the state
  _, outs = jax.lax.scan(lambda c, s: (c, forward(s, x)), 0, stacked)
  np.testing.assert_allclose(outs[1], want, rtol=1e-5)
  assert np.array_equal(
    np.asarray(nnx.merge(graphdef, state).hidden[0].kernel_mask.get_value()), masks['hidden/0/kernel_mask']
  )


@pytest.mark.parametrize('candidates', rewiring.CANDIDATES)
def test_every_prune_and_grow_criterion_keeps_density_and_resets_the_moments_of_changed_entries(candidates):
  for prune, grow in itertools.product(rewiring.PRUNE[1:], rewiring.GROW[1:]):
    model = MLP(nnx.Rngs(0))
    sparse_nnx.sparsify(model, SPEC, seed=0)
    optimizer = nnx.Optimizer(model, optax.adam(1e-2), wrt=nnx.Param)
    for _ in range(2):
      train_step(model, optimizer, batch())
    before = masks_of(model)
    spec = RewireSpec(prune=prune, grow=grow, fraction=0.25, candidates=candidates)
    info = sparse_nnx.rewire(
      model,
      optimizer,
      jax.tree.map(lambda a: a[None], batch()),
      jax.random.PRNGKey(2),
      spec=spec,
      step=2,
      forward=lambda m, b: m(b['x']),
      loss_fn=loss_fn,
    )
    after = masks_of(model)
    mu = nnx.as_pure(optimizer.opt_state)[0].mu
    for k in range(2):
      m0, m1 = before[f'hidden/{k}/kernel_mask'], after[f'hidden/{k}/kernel_mask']
      grown = np.asarray(model.hidden[k].kernel_grown.get_value())
      kernel = np.asarray(model.hidden[k].kernel.get_value())
      where = (prune, grow, k)
      assert m1.sum() == m0.sum() and int(info[str(k)]['pruned']) == (m0 & ~m1).sum(), where
      assert np.all(kernel[~m1] == 0) and np.all(kernel[grown] == 0), where
      changed = (m0 & ~m1) | grown
      assert np.all(np.asarray(mu['hidden'][k]['kernel'])[changed] == 0), where
    if candidates == 'same_kind':
      for k in range(2):
        assert int(info[str(k)]['intra']) == int(np.sum(after[f'hidden/{k}/kernel_mask'] & same_group(model, k)))


def same_group(model, k):
  layer = model.hidden[k]
  return np.asarray(layer.groups_in.get_value())[:, None] == np.asarray(layer.groups_out.get_value())[None, :]


def test_a_filter_picks_the_kernels_and_bad_input_is_refused_naming_the_path():
  model = MLP(nnx.Rngs(0))
  picked = sparse_nnx.sparsify(
    model, SPEC, seed=0, where=nnx.All(nnx.Param, nnx.PathContains('hidden'), lambda p, v: p[-1] == 'kernel')
  )
  assert picked == ['hidden/0/kernel', 'hidden/1/kernel']
  with pytest.raises(ValueError, match=r"sparse_kernels = 'nope/\*' matches no Param of the model"):
    sparse_nnx.sparsify(MLP(nnx.Rngs(0)), ConnectivitySpec(sparse_kernels='nope/*'), seed=0)
  with pytest.raises(
    ValueError, match=r'out/kernel: its output size 4 must be a multiple of ConnectivitySpec.num_groups \(8\)'
  ):
    sparse_nnx.sparsify(MLP(nnx.Rngs(0)), ConnectivitySpec(sparse_kernels='out/kernel'), seed=0)


class Tiled(nnx.Module):
  def __init__(self, rngs, plan):
    self.first = nnx.Linear(32, 32, rngs=rngs)
    self.tiled = sparse_nnx.TiledLinear(32, 64, plan, rngs=rngs)

  def __call__(self, x):
    return self.tiled(nnx.relu(self.first(x)))


def test_the_tiled_layer_equals_the_masked_layer_in_values_and_gradients():
  spec = ConnectivitySpec(
    num_groups=4, p_inter=0.25, inter='tiles', tile_density=0.5, grouping='random', sparse_kernels='tiled/kernel'
  )
  model = Tiled(nnx.Rngs(0), sparse_nnx.plan_layer(32, 64, 0, spec))
  sparse_nnx.sparsify(model, spec, seed=0)
  layer = model.tiled
  layout = {k: np.asarray(v) for k, v in layer.layout().items()}
  dense = nnx.Linear(32, 64, rngs=nnx.Rngs(1))
  dense.kernel.set_value(jnp.asarray(tiles.to_dense(np.asarray(layer.kernel.get_value()), layout, 32, 64)))
  dense.bias.set_value(layer.bias.get_value())
  h = jax.random.normal(jax.random.PRNGKey(4), (5, 32))
  np.testing.assert_allclose(layer(h), dense(h), rtol=1e-5, atol=1e-6)
  g_tiled = nnx.grad(lambda m: (m(h) ** 2).sum())(layer)['kernel'].get_value()
  g_dense = nnx.grad(lambda m: (m(h) ** 2).sum())(dense)['kernel'].get_value()
  present = tiles.to_dense(np.ones(layer.kernel.get_value().shape, bool), layout, 32, 64)
  from_tiles = tiles.to_dense(np.asarray(g_tiled), layout, 32, 64)
  np.testing.assert_allclose(from_tiles[present], np.asarray(g_dense)[present], rtol=1e-4, atol=1e-5)
  mask = np.asarray(layer.kernel_mask.get_value())
  assert 0 < mask.mean() < 1 and conn.layer_layout(sparse_nnx.sparsity_of(model).layout, ('tiled', 'kernel'))
  optimizer = nnx.Optimizer(model, optax.adam(1e-2), wrt=nnx.Param)
  info = sparse_nnx.rewire(
    model, optimizer, h[None], jax.random.PRNGKey(0), spec=RewireSpec(prune='magnitude', grow='hebbian'), step=1
  )
  assert int(info['tiled']['pruned']) > 0 and np.asarray(layer.kernel_mask.get_value()).sum() == mask.sum()


def test_a_rewiring_compiles_once_under_nnx_jit():
  model = MLP(nnx.Rngs(0))
  sparse_nnx.sparsify(model, SPEC, seed=0)
  optimizer = nnx.Optimizer(model, optax.sgd(1e-2), wrt=nnx.Param)
  traces = []

  def counted(*args, **kwargs):
    traces.append(1)
    return sparse_nnx.rewire(*args, **kwargs)

  rewire = nnx.jit(functools.partial(counted, spec=RewireSpec(prune='random', grow='random', fraction=0.3)))
  for step in range(3):
    rewire(model, optimizer, batch()['x'][None], jax.random.PRNGKey(step), step=step)
  assert len(traces) == 1
  with tempfile.TemporaryDirectory() as d:  # and orbax keeps the masks with the model
    checkpointer = ocp.StandardCheckpointer()
    checkpointer.save(d + '/m', nnx.state(model))
    checkpointer.wait_until_finished()
    again = MLP(nnx.Rngs(5))
    sparse_nnx.sparsify(again, SPEC, seed=3)
    nnx.update(again, checkpointer.restore(d + '/m', nnx.state(again)))
    for name, m in masks_of(again).items():
      np.testing.assert_array_equal(m, masks_of(model)[name])
