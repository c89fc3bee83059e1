"""Test-wide settings: four CPU devices, strict rank promotion, small shared fixtures."""

import os

# Must be set before JAX initialises its backends: tests see 4 CPU devices, so every
# test exercises the data-parallel path.
os.environ['XLA_FLAGS'] = os.environ.get('XLA_FLAGS', '') + ' --xla_force_host_platform_device_count=4'
os.environ.setdefault('JAX_PLATFORMS', 'cpu')

import jax  # noqa: E402
import pytest  # noqa: E402

jax.config.update('jax_numpy_rank_promotion', 'raise')

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def load_config(name: str = 'smoke', row: str = 'g2g'):
  """A config file from configs/ as the CLI would load it."""
  import importlib.util

  spec = importlib.util.spec_from_file_location(f'cfg_{name}', os.path.join(ROOT, 'configs', f'{name}.py'))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config(row)


@pytest.fixture
def smoke_config():
  config = load_config('smoke')
  config.progress = 'none'
  return config
