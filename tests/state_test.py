import jax.numpy as jnp
import numpy as np

from g2g_jax.state import apply_masks


def test_apply_masks_zeroes_masked_entries_and_leaves_dense_leaves():
  tree = {'a': {'kernel': jnp.full((2, 2), jnp.nan), 'bias': jnp.ones(2)}, 'b': jnp.arange(3.0)}
  masks = {'a': {'kernel': jnp.array([[True, False], [False, True]]), 'bias': None}, 'b': None}
  out = apply_masks(tree, masks)
  assert np.isnan(out['a']['kernel'][0, 0]) and out['a']['kernel'][0, 1] == 0  # where, not multiply
  np.testing.assert_array_equal(out['a']['bias'], [1, 1])
  np.testing.assert_array_equal(out['b'], [0, 1, 2])
