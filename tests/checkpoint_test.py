import jax
import numpy as np

from g2g_jax.checkpoint import Checkpointer
from g2g_jax.train import make_train_state


def test_round_trip_keeps_masks_none_leaves_and_meta(tmp_path, smoke_config):
  state = make_train_state(smoke_config)
  state = state.replace(step=7)
  ckpt = Checkpointer(str(tmp_path))
  ckpt.save(7, state, {'best_test_accuracy': 0.5})
  template = make_train_state(smoke_config, jax.random.PRNGKey(99))
  restored, meta = ckpt.restore(template)
  assert meta == {'best_test_accuracy': 0.5}
  assert int(restored.step) == 7
  assert restored.masks['head']['hidden_0']['bias'] is None
  for a, b in zip(jax.tree.leaves(state), jax.tree.leaves(restored), strict=True):
    np.testing.assert_array_equal(a, b)
  ckpt.close()
