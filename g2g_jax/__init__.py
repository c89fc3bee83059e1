"""G2GNet in JAX/Flax: sparse, modular group-to-group connectivity for feedforward layers."""

from g2g_jax.connectivity import ConnectivitySpec, accounting, make_masks
from g2g_jax.data import load_dataset
from g2g_jax.experiment import ConfigError, Experiment, parse_config
from g2g_jax.models import G2GNet
from g2g_jax.rewiring import RewireSpec, count_active, update_masks
from g2g_jax.state import TrainState
from g2g_jax.train import (
  compiler_options,
  eval_step,
  make_train_state,
  make_train_states,
  replica,
  train_and_evaluate,
  train_step,
)

__all__ = [
  'ConfigError',
  'ConnectivitySpec',
  'Experiment',
  'G2GNet',
  'RewireSpec',
  'TrainState',
  'accounting',
  'compiler_options',
  'count_active',
  'eval_step',
  'load_dataset',
  'make_masks',
  'make_train_state',
  'make_train_states',
  'parse_config',
  'replica',
  'train_and_evaluate',
  'train_step',
  'update_masks',
]
