import functools
import itertools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import final_state, records, synthetic_batches
from g2g_jax import rewiring, train
from g2g_jax.config import ConfigError, parse_config

W = np.array(
  [
    [0.5, -0.1, 0.9, 0.0],
    [0.3, 0.2, -0.05, 0.7],
    [0.0, 0.8, 0.0, -0.4],
    [0.6, 0.0, 0.15, 0.0],
  ],
  np.float32,
)
M = W != 0  # 11 active edges


def positions(mask):
  return sorted(map(tuple, np.argwhere(np.asarray(mask)).tolist()))


def spec(**kw):
  return rewiring.RewireSpec(**{'prune': 'magnitude', 'grow': 'random', **kw})


def test_hebbian_scores_by_hand():
  pre = jnp.array([[1.0, 0.0, 0.0], [1.0, 1.0, 0.0]])  # neuron 2 is silent
  post = jnp.array([[1.0, 0.0], [0.0, 1.0]])
  s = rewiring.hebbian_scores(pre, post)
  r = 1 / np.sqrt(2)
  np.testing.assert_allclose(s, [[r, r], [0.0, 1.0], [0.0, 0.0]], atol=1e-6)


def test_select_top_breaks_ties_by_index_and_respects_candidates():
  score = jnp.array([[1.0, 1.0], [1.0, 5.0]])
  cand = jnp.array([[True, True], [True, False]])
  assert positions(rewiring.select_top(score, cand, 2)) == [(0, 0), (0, 1)]
  assert positions(rewiring.select_bottom(score, cand, 1)) == [(0, 0)]
  assert positions(rewiring.select_top(score, cand, 0)) == []
  for k_max in (2, 3):  # a static bound on n gives the same answer
    assert positions(rewiring.select_top(score, cand, 2, k_max)) == [(0, 0), (0, 1)]
  assert positions(rewiring.select_top(score, cand, 5)) == [(0, 0), (0, 1), (1, 0)]  # only 3 candidates


def test_magnitude_prune_and_gradient_grow_by_hand():
  grad = np.zeros((4, 4), np.float32)
  grad[0, 0] = 5.0  # present: not a candidate
  grad[3, 3], grad[2, 0], grad[0, 1], grad[2, 2] = -0.9, 0.7, 0.5, 0.1
  pruned, grown = rewiring.rewire_layer(
    spec(grow='gradient'), jnp.asarray(M), jnp.asarray(W), 2, jax.random.PRNGKey(0), gradient=jnp.asarray(grad)
  )
  assert positions(pruned) == [(0, 1), (1, 2)]  # |w| 0.1 and 0.05, the two smallest present
  assert positions(grown) == [(2, 0), (3, 3)]  # |g| 0.7 and 0.9, the largest absent


def test_hebbian_prune_and_grow_by_hand():
  h = np.full((4, 4), 0.5, np.float32)
  h[0, 2], h[3, 0] = 0.05, 0.1  # weakest present correlations
  h[2, 2], h[3, 1] = 0.95, 0.9  # strongest absent ones
  h[1, 1] = 0.99  # strong but already present: not grown
  pruned, grown = rewiring.rewire_layer(
    spec(prune='hebbian', grow='hebbian'),
    jnp.asarray(M),
    jnp.asarray(W),
    2,
    jax.random.PRNGKey(0),
    hebbian=jnp.asarray(h),
  )
  assert positions(pruned) == [(0, 2), (3, 0)]
  assert positions(grown) == [(2, 2), (3, 1)]


def test_mixed_prunes_a_third_by_each_criterion():
  rng = np.random.default_rng(0)
  w = rng.uniform(0.5, 1.0, (6, 6)).astype(np.float32)
  h = rng.uniform(0.5, 1.0, (6, 6)).astype(np.float32)
  mask = np.ones((6, 6), bool)
  w[1, 4] = 0.01  # smallest magnitude
  h[5, 0] = 0.0  # lowest Hebbian score
  for seed in range(5):
    pruned, _ = rewiring.rewire_layer(
      spec(prune='mixed', grow='random'),
      jnp.asarray(mask),
      jnp.asarray(w),
      3,
      jax.random.PRNGKey(seed),
      hebbian=jnp.asarray(h),
    )
    got = positions(pruned)
    assert len(got) == 3 and (1, 4) in got and (5, 0) in got


def test_random_prune_is_uniform_over_present_edges():
  counts = np.zeros((4, 4))
  for seed in range(400):
    pruned, grown = rewiring.rewire_layer(
      spec(prune='random'), jnp.asarray(M), jnp.asarray(W), 2, jax.random.PRNGKey(seed)
    )
    assert int(pruned.sum()) == 2 and not np.any(np.asarray(pruned) & ~M)
    assert int(grown.sum()) == 2 and not np.any(np.asarray(grown) & M & ~np.asarray(pruned))
    counts += np.asarray(pruned)
  # 800 draws over 11 edges: about 72.7 each (binomial sd about 8).
  assert counts[~M].sum() == 0 and counts[M].min() > 45 and counts[M].max() < 100


def test_same_kind_growth_keeps_intra_and_inter_budgets():
  groups = np.array([0, 0, 1, 1])
  same = groups[:, None] == groups[None, :]
  mask = same.copy()
  mask[0, 3] = mask[3, 0] = True  # two inter edges
  w = np.where(mask, 1.0, 0.0).astype(np.float32)
  w[0, 0], w[0, 3] = 0.1, 0.2  # one intra and one inter edge are the weakest
  h = np.where(same, 0.0, 1.0).astype(np.float32)  # Hebbian prefers every inter edge
  h[0, 0] = 0.5
  layer = functools.partial(
    rewiring.rewire_layer,
    mask=jnp.asarray(mask),
    kernel=jnp.asarray(w),
    n=2,
    key=jax.random.PRNGKey(0),
    hebbian=jnp.asarray(h),
    same_group=jnp.asarray(same),
  )
  pruned, grown = layer(spec(grow='hebbian', candidates='same_kind'))
  assert positions(pruned) == [(0, 0), (0, 3)]
  assert int((grown & same).sum()) == 1 and int((grown & ~same).sum()) == 1
  assert (0, 0) in positions(grown)  # the only absent intra edge after pruning
  _, grown_all = layer(spec(grow='hebbian', candidates='all'))
  assert int((grown_all & same).sum()) == 0  # 'all' follows the score across groups


def test_schedule():
  s = spec(rewire_every_steps=10, rewire_start_steps=20, rewire_end_steps=50)
  assert [t for t in range(0, 70) if s.due(t)] == [20, 30, 40, 50]
  assert not rewiring.RewireSpec().enabled and not rewiring.RewireSpec().due(1000)
  cos = spec(fraction=0.2, fraction_schedule='cosine', rewire_start_steps=0, rewire_end_steps=100)
  np.testing.assert_allclose(
    [cos.fraction_at(0), cos.fraction_at(50), cos.fraction_at(100)], [0.2, 0.1, 0.0], atol=1e-6
  )
  assert float(spec(fraction=0.3).fraction_at(77)) == pytest.approx(0.3)


# ---------------------------------------------------------------------------------
# update_masks on the smoke model.


def trained_state(config, steps=3):
  state = train.make_train_state(config)
  step = jax.jit(functools.partial(train.train_step, augment='none', crop_padding=0))
  for batch in synthetic_batches(config, steps):
    state, _ = step(state, batch)
  return state


def stacked(config, k=2):
  return jax.tree.map(lambda *xs: np.stack(xs), *synthetic_batches(config, k))


def rewire_spec(**kw):
  return rewiring.RewireSpec(**{'rewire_end_steps': 100, **kw})


@pytest.mark.parametrize('candidates', rewiring.CANDIDATES)
def test_update_invariants_for_every_prune_and_grow_pair(smoke_config, candidates):
  state = trained_state(smoke_config)
  before = jax.device_get(state)
  adam = lambda s: s.opt_state[1]  # noqa: E731  (add_decayed_weights, scale_by_adam, lr)
  for prune, grow in itertools.product(rewiring.PRUNE[1:], rewiring.GROW[1:]):
    rspec = rewire_spec(prune=prune, grow=grow, fraction=0.25, candidates=candidates)
    update = functools.partial(train.update_masks, spec=rspec)  # eager: 24 compilations would dominate
    new, info = jax.device_get(update(state, stacked(smoke_config), jax.random.PRNGKey(1)))
    for k in range(3):
      name = f'hidden_{k}'
      get = lambda tree: tree['head'][name]['kernel']  # noqa: E731, B023
      m0, m1, w0, w1, g = (
        get(before.sparsity.masks),
        get(new.sparsity.masks),
        get(before.params),
        get(new.params),
        get(new.sparsity.last_grown),
      )
      n = int(round(0.25 * m0.sum()))
      where = (prune, grow, name)
      assert m1.sum() == m0.sum(), where  # density exactly constant
      # The counts are the mask's changes; the selection (n each way) adds the edges regrown in place.
      assert int(info[name]['pruned']) == (m0 & ~m1).sum() == int(info[name]['grown']) == (m1 & ~m0).sum(), where
      assert int(info[name]['pruned']) + int(info[name]['regrown']) == n == g.sum(), where
      assert not np.any(g & ~m1)
      assert np.all(w1[~m1] == 0), where  # pruned (and absent) weights are 0
      assert np.all(w1[g] == 0), where  # grown weights are born at 0
      np.testing.assert_array_equal(w1[m1 & ~g], w0[m1 & ~g])  # kept edges keep their weights
      changed = (m0 & ~m1) | g
      for moment in ('mu', 'nu'):
        mo0, mo1 = get(getattr(adam(before), moment)), get(getattr(adam(new), moment))
        assert np.all(mo1[changed] == 0), where  # reset exactly where the mask changed
        np.testing.assert_array_equal(mo1[~changed], mo0[~changed])  # untouched elsewhere
        assert np.any(mo0[changed & m0] != 0)  # (there was something to reset)
      same = same_group(before, k)
      assert int(info[name]['intra']) == (m1 & same).sum() and int(info[name]['inter']) == (m1 & ~same).sum()
      if candidates == 'same_kind':
        assert (m1 & same).sum() == (m0 & same).sum(), where  # the intra / inter budget is kept
    chex.assert_trees_all_equal(before.params['encoder'], new.params['encoder'])
    chex.assert_trees_all_equal(before.params['head']['output'], new.params['head']['output'])
    chex.assert_trees_all_equal(adam(before).mu['encoder'], adam(new).mu['encoder'])
    for k in range(3):
      np.testing.assert_array_equal(
        before.params['head'][f'hidden_{k}']['bias'], new.params['head'][f'hidden_{k}']['bias']
      )
      assert new.sparsity.masks['head'][f'hidden_{k}']['bias'] is None
    assert new.sparsity.masks['head']['output']['kernel'] is None


def same_group(state, k):
  groups = state.sparsity.groups[f'hidden_{k}']
  return np.asarray(groups['in'])[:, None] == np.asarray(groups['out'])[None, :]


def test_no_retrace_across_updates_and_train_steps(smoke_config):
  state = trained_state(smoke_config, steps=1)
  rspec = rewire_spec(prune='hebbian', grow='gradient', fraction_schedule='cosine', rewire_end_steps=8)

  @jax.jit
  @chex.assert_max_traces(n=1)
  def update(state, batch, rng):
    return train.update_masks(state, batch, rng, spec=rspec)

  @jax.jit
  @chex.assert_max_traces(n=1)
  def step(state, batch):
    return train.train_step(state, batch, augment='none', crop_padding=0)

  batches = synthetic_batches(smoke_config, 5)
  sizes = []
  for b in batches:
    state, info = update(state, stacked(smoke_config), jax.random.PRNGKey(int(state.step)))
    sizes.append(int(info['hidden_1']['pruned']))
    state, _ = step(state, b)
  assert len(set(sizes)) > 1  # the cosine fraction changed n without a retrace
  assert update._cache_size() == 1 and step._cache_size() == 1


def test_rewiring_config_errors(smoke_config):
  smoke_config.rewiring.prune = 'hebbian'
  with pytest.raises(ConfigError, match="config.rewiring.grow = 'none': must be set too"):
    parse_config(smoke_config, device_count=4)
  smoke_config.rewiring.grow = 'hebbian'
  smoke_config.connectivity.kind = 'dense'
  with pytest.raises(ConfigError, match="config.rewiring.prune = 'hebbian': must be 'none' with connectivity.kind"):
    parse_config(smoke_config, device_count=4)
  smoke_config.connectivity.kind = 'g2g'
  smoke_config.rewiring.fraction = 1.5
  with pytest.raises(ConfigError, match=r'config.rewiring.fraction = 1.5: must be in \[0.0, 1.0\]'):
    parse_config(smoke_config, device_count=4)
  smoke_config.rewiring.fraction = 0.1
  smoke_config.connectivity.inter = 'tiles'  # tile_density 1: the present tiles are full, nothing to grow into
  with pytest.raises(
    ConfigError, match=r"config.rewiring.prune = 'hebbian': needs absent edges .*connectivity.tile_density < 1"
  ):
    parse_config(smoke_config, device_count=4)
  smoke_config.connectivity.tile_density = 0.5
  parse_config(smoke_config, device_count=4)


def dst_config(config):
  config.rewiring.prune = 'hebbian'
  config.rewiring.grow = 'hebbian'
  config.rewiring.rewire_every_steps = 4
  config.rewiring.hebbian_batches = 2
  config.rewiring.fraction = 0.2
  return config


def test_smoke_run_with_rewiring_logs_each_update(smoke_config, tmp_path):
  train.train_and_evaluate(dst_config(smoke_config), str(tmp_path))
  rows = records(str(tmp_path))
  rewires = [r for r in rows if r['kind'] == 'rewire']
  assert [r['step'] for r in rewires] == [4, 8, 12, 16]
  first, later = rewires[0], rewires[1]
  assert first['hidden_0/turnover'] is None and 0.0 <= later['hidden_0/turnover'] <= 1.0
  for key in ('pruned', 'grown', 'intra', 'inter', 'pruned_mean_abs_weight', 'active'):
    assert f'hidden_2/{key}' in first
  assert first['hidden_0/pruned'] == first['hidden_0/grown'] > 0
  evals = [r for r in rows if r['kind'] == 'eval']
  assert len(evals) == 2 and 0 < evals[-1]['rewire_time_share'] < 1
  state = final_state(smoke_config, str(tmp_path))
  initial = train.make_train_state(smoke_config)
  for k in range(3):
    m0, m1 = (
      initial.sparsity.masks['head'][f'hidden_{k}']['kernel'],
      state.sparsity.masks['head'][f'hidden_{k}']['kernel'],
    )
    assert int(m1.sum()) == int(m0.sum()) and bool(jnp.any(m1 != m0))
    assert rewires[-1][f'hidden_{k}/active'] == int(m0.sum())
    assert bool(jnp.all(jnp.where(m1, 0.0, state.params['head'][f'hidden_{k}']['kernel']) == 0))


def test_resume_across_a_mask_update_equals_uninterrupted(smoke_config, tmp_path):
  dst_config(smoke_config)
  train.train_and_evaluate(smoke_config, str(tmp_path / 'straight'))
  smoke_config.halt_after_steps = 6  # between the updates at steps 4 and 8
  train.train_and_evaluate(smoke_config, str(tmp_path / 'resumed'))
  smoke_config.halt_after_steps = 0
  train.train_and_evaluate(smoke_config, str(tmp_path / 'resumed'))
  a, b = final_state(smoke_config, str(tmp_path / 'straight')), final_state(smoke_config, str(tmp_path / 'resumed'))
  chex.assert_trees_all_equal(a.sparsity.masks, b.sparsity.masks)
  chex.assert_trees_all_equal(a.params, b.params)
  chex.assert_trees_all_equal(a.opt_state, b.opt_state)
