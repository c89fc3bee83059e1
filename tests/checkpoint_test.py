import jax
import numpy as np

from g2g_jax.checkpoint import Checkpointer
from g2g_jax.train import make_train_state


def test_round_trip_keeps_masks_none_leaves_and_meta(tmp_path, smoke_config):
  state = make_train_state(smoke_config)
  state = state.replace(step=7)
  ckpt = Checkpointer(str(tmp_path))
  ckpt.save(7, state, {'best_test_accuracy': 0.5})
  smoke_config.seed = 99  # another state of the same shapes
  template = make_train_state(smoke_config)
  restored, meta = ckpt.restore(template)
  assert meta == {'best_test_accuracy': 0.5}
  assert int(restored.step) == 7
  assert restored.sparsity.masks['head']['hidden_0']['bias'] is None
  for a, b in zip(jax.tree.leaves(state), jax.tree.leaves(restored), strict=True):
    np.testing.assert_array_equal(a, b)
  ckpt.close()


def test_async_save_keeps_the_values_at_save_time(tmp_path, smoke_config):
  """save returns before the files are written; donating the state right after must not change them."""
  state = make_train_state(smoke_config).replace(step=3)
  expected = jax.tree.map(np.array, state.params)  # copies
  ckpt = Checkpointer(str(tmp_path))
  ckpt.save(3, state, {})
  bump = jax.jit(lambda p: jax.tree.map(lambda x: x + 1.0, p), donate_argnums=0)
  for _ in range(3):  # the training loop donates the state to the next step at once
    state = state.replace(params=bump(state.params))
  assert ckpt.latest_step() == 3  # waits for the save in flight
  smoke_config.seed = 5
  restored, _ = ckpt.restore(make_train_state(smoke_config))
  for a, b in zip(jax.tree.leaves(expected), jax.tree.leaves(restored.params), strict=True):
    np.testing.assert_array_equal(a, b)
  ckpt.close()
