"""G2GNet in JAX/Flax: sparse, modular group-to-group connectivity for feedforward layers.

The public API, imported on first use: `import g2g_jax` itself loads nothing heavy, so the
command line can take signals before JAX is loaded.
"""

import importlib

_EXPORTS = {
  'ConfigError': 'config',
  'RunSpec': 'config',
  'parse_config': 'config',
  'accounting': 'connectivity',
  'make_masks': 'connectivity',
  'load_dataset': 'data',
  'G2GNet': 'models',
  'update_masks': 'train',
  'TrainState': 'state',
  'eval_step': 'train',
  'evaluate': 'train',
  'load_run': 'train',
  'make_train_state': 'train',
  'train_and_evaluate': 'train',
  'train_step': 'train',
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
  if name in _EXPORTS:
    return getattr(importlib.import_module(f'g2g_jax.{_EXPORTS[name]}'), name)
  raise AttributeError(f'module {__name__!r} has no attribute {name!r}')


def __dir__():
  return __all__
