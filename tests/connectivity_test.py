import numpy as np
import pytest

from g2g_jax import connectivity as conn


def spec(**kw):
  base = {'kind': 'g2g', 'grouping': 'index', 'num_groups': 4, 'sparse_kernels': 'head/hidden_*/kernel'}
  return conn.ConnectivitySpec(**{**base, **kw})


def test_index_groups_are_contiguous_blocks_on_both_sides():
  g_in, g_out = conn.layer_groups(8, 12, layer=1, spec=spec(), seed=0)
  np.testing.assert_array_equal(g_in, [0, 0, 1, 1, 2, 2, 3, 3])
  np.testing.assert_array_equal(g_out, [0, 0, 0, 1, 1, 1, 2, 2, 2, 3, 3, 3])


def test_mixer_alternates_contiguous_and_interleaved():
  s = spec(grouping='mixer')
  g0 = conn.layer_groups(8, 8, layer=0, spec=s, seed=0)
  g1 = conn.layer_groups(8, 8, layer=1, spec=s, seed=0)
  g2 = conn.layer_groups(8, 8, layer=2, spec=s, seed=0)
  for g in (*g0, *g2):
    np.testing.assert_array_equal(g, [0, 0, 1, 1, 2, 2, 3, 3])
  for g in g1:
    np.testing.assert_array_equal(g, [0, 1, 2, 3, 0, 1, 2, 3])
  # Neurons that layer 0 puts in one output group land in different groups of layer 1.
  assert len(set(g1[0][g0[1] == 0])) == 2


def test_random_groups_are_balanced_independent_and_seeded():
  s = spec(grouping='random')
  g_in, g_out = conn.layer_groups(16, 16, layer=0, spec=s, seed=3)
  for g in (g_in, g_out):
    np.testing.assert_array_equal(np.bincount(g, minlength=4), [4, 4, 4, 4])
  assert not np.array_equal(g_in, g_out)  # each side drawn on its own
  again = conn.layer_groups(16, 16, layer=0, spec=s, seed=3)
  np.testing.assert_array_equal(again[0], g_in)
  other_layer = conn.layer_groups(16, 16, layer=1, spec=s, seed=3)
  assert not np.array_equal(other_layer[0], g_in)


def test_g2g_mask_with_p_one_and_zero_is_block_diagonal():
  mask = conn.make_layer_mask(4, 4, layer=0, spec=spec(num_groups=2, p_intra=1.0, p_inter=0.0), seed=0)
  expected = np.array([[1, 1, 0, 0], [1, 1, 0, 0], [0, 0, 1, 1], [0, 0, 1, 1]], bool)
  np.testing.assert_array_equal(mask, expected)


@pytest.mark.parametrize('grouping', conn.GROUPINGS)
@pytest.mark.parametrize('kind', ['g2g', 'er'])
def test_density_matches_formula(kind, grouping):
  s = spec(kind=kind, grouping=grouping, num_groups=8, p_intra=1.0, p_inter=0.15)
  assert s.density == pytest.approx(1 / 8 + 0.15 * 7 / 8) == pytest.approx(0.25625)
  mask = conn.make_layer_mask(512, 1024, layer=1, spec=s, seed=0)
  # 524288 Bernoulli draws: the standard error of the mean is below 0.001.
  assert mask.mean() == pytest.approx(0.25625, abs=0.003)


def test_g2g_mask_intra_and_inter_probabilities():
  s = spec(grouping='index', num_groups=4, p_intra=0.5, p_inter=0.1)
  g_in, g_out = conn.layer_groups(400, 400, 0, s, 0)
  mask = conn.make_layer_mask(400, 400, 0, s, 0)
  same = g_in[:, None] == g_out[None, :]
  assert mask[same].mean() == pytest.approx(0.5, abs=0.01)
  assert mask[~same].mean() == pytest.approx(0.1, abs=0.01)


def test_masks_tree_matches_params_with_none_for_dense_leaves():
  params = {
    'encoder': {'conv': {'kernel': np.zeros((7, 7, 1, 4)), 'bias': np.zeros(4)}},
    'head': {
      'hidden_0': {'kernel': np.zeros((16, 8)), 'bias': np.zeros(8)},
      'hidden_1': {'kernel': np.zeros((8, 8)), 'bias': np.zeros(8)},
      'output': {'kernel': np.zeros((8, 3)), 'bias': np.zeros(3)},
    },
  }
  masks = conn.make_masks(params, spec(grouping='mixer'), seed=0)
  assert masks['encoder']['conv'] == {'kernel': None, 'bias': None}
  assert masks['head']['output'] == {'kernel': None, 'bias': None}
  assert masks['head']['hidden_0']['bias'] is None
  assert masks['head']['hidden_0']['kernel'].shape == (16, 8)
  assert masks['head']['hidden_1']['kernel'].dtype == bool
  dense = conn.make_masks(params, spec(kind='dense'), seed=0)
  assert dense['head']['hidden_0']['kernel'] is None


def test_rescale_init_restores_per_output_scale():
  kernel = np.ones((4, 2), np.float32)
  mask = np.array([[1, 1], [0, 1], [0, 1], [0, 1]], bool)
  out = conn.rescale_init(kernel, mask)
  np.testing.assert_allclose(out[:, 0], [2.0, 0, 0, 0])  # sqrt(4 / 1)
  np.testing.assert_allclose(out[:, 1], [1.0, 1, 1, 1])  # sqrt(4 / 4)


def test_param_counts_and_fc_v1_width():
  g2g = conn.mlp_param_count(512, [1024] * 3, 10, density=0.25625)
  dense = conn.mlp_param_count(512, [1024] * 3, 10)
  assert dense == 2_634_762  # the paper's 2.63M for FC v2
  assert g2g == pytest.approx(685_066)  # the paper's 0.685M for G2GNet
  width = conn.param_matched_width(512, 3, 10, g2g)
  # 468 gives 683,758 and 469 gives 686,157 parameters: 469 is nearer 685,066.
  assert width == 469
  assert conn.mlp_param_count(512, [469] * 3, 10) == 686_157


def test_accounting_counts_active_weights_and_flops():
  params = {
    'encoder': {'conv': {'kernel': np.zeros((2, 2, 1, 3)), 'bias': np.zeros(3)}},
    'head': {
      'hidden_0': {'kernel': np.zeros((4, 4)), 'bias': np.zeros(4)},
      'output': {'kernel': np.zeros((4, 2)), 'bias': np.zeros(2)},
    },
  }
  mask = np.eye(4, dtype=bool)
  masks = {
    'encoder': {'conv': {'kernel': None, 'bias': None}},
    'head': {'hidden_0': {'kernel': mask, 'bias': None}, 'output': {'kernel': None, 'bias': None}},
  }
  acct = conn.accounting(params, masks, runs={'encoder/*': 5}, head='head/*')
  assert acct['head_params'] == 4 + 4 + 8 + 2
  assert acct['total_params'] == 18 + 12 + 3
  assert acct['density'] == 0.25 and acct['sparsity'] == 0.75
  assert acct['layer_density'] == {'head/hidden_0': 0.25}
  assert acct['flops_per_example'] == 2 * (12 * 5 + 4 + 8)
  assert acct['flops_per_example_dense'] == 2 * (12 * 5 + 16 + 8)
