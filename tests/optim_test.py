import jax.numpy as jnp
import numpy as np
import optax
import pytest

from g2g_jax import optim


def test_l2_decay_is_added_to_the_gradient_before_adam():
  spec = optim.OptimSpec(learning_rate=0.1, weight_decay=0.5, schedule='constant')
  tx = optim.make_optimizer(spec, total_steps=10)
  params = {'w': jnp.array([2.0, -1.0])}
  grads = {'w': jnp.array([0.0, 0.0])}
  updates, _ = tx.update(grads, tx.init(params), params)
  # First Adam step: m/(sqrt(v)+eps) = sign(g + wd*p), so the update is -lr*sign(p).
  np.testing.assert_allclose(updates['w'], [-0.1, 0.1], rtol=1e-5)
  reference = optax.chain(optax.add_decayed_weights(0.5), optax.adam(0.1))
  ref_updates, _ = reference.update(grads, reference.init(params), params)
  np.testing.assert_allclose(updates['w'], ref_updates['w'], rtol=1e-6)


def test_cosine_schedule_and_warmup():
  sched = optim.make_schedule(optim.OptimSpec(learning_rate=1.0), total_steps=100)
  assert sched(0) == pytest.approx(1.0) and sched(50) == pytest.approx(0.5) and sched(100) == pytest.approx(0.0)
  warm = optim.make_schedule(optim.OptimSpec(learning_rate=1.0, warmup_steps=10), total_steps=110)
  assert warm(5) == pytest.approx(0.5) and warm(10) == pytest.approx(1.0) and warm(110) == pytest.approx(0.0)
