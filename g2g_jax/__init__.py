"""G2GNet in JAX/Flax: sparse, modular group-to-group connectivity for feedforward layers."""

from g2g_jax.config import ConfigError, RunSpec, parse_config
from g2g_jax.connectivity import accounting, make_masks
from g2g_jax.data import load_dataset
from g2g_jax.models import G2GNet
from g2g_jax.rewiring import update_masks
from g2g_jax.state import TrainState
from g2g_jax.train import eval_step, evaluate, load_run, make_train_state, train_and_evaluate, train_step

__all__ = [
  'ConfigError',
  'G2GNet',
  'RunSpec',
  'TrainState',
  'accounting',
  'eval_step',
  'evaluate',
  'load_dataset',
  'load_run',
  'make_masks',
  'make_train_state',
  'parse_config',
  'train_and_evaluate',
  'train_step',
  'update_masks',
]
