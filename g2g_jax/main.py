"""Command line: python -m g2g_jax.main --config=configs/cifar100.py --workdir=DIR.

Fields are overridden with --config.section.field=value; an unknown field is an error.
A rerun with the same workdir resumes from its last checkpoint.
"""

import sys

import jax
from absl import app, flags, logging
from ml_collections import config_flags

from g2g_jax import train
from g2g_jax.config import ConfigError
from g2g_jax.data import DataError, DataNotFoundError

_CONFIG = config_flags.DEFINE_config_file(
  'config', None, 'Path to a config file (configs/*.py[:row]).', lock_config=True
)
_WORKDIR = flags.DEFINE_string('workdir', None, 'Folder for checkpoints and metrics; a rerun resumes there.')
flags.mark_flags_as_required(['config', 'workdir'])


def parse_flags(argv: list[str]) -> list[str]:
  """absl's parser, with a one-line error for an unknown field or a bad value."""
  try:
    return flags.FLAGS(argv)
  except (AttributeError, KeyError) as e:  # config_flags on an override of a missing field
    key = str(e).strip('"\'')
    named = [a.split('=')[0] for a in argv if a.startswith('--config.') and f'.{key}' in a.split('=')[0]]
    where = named[0] if named else 'a --config override'
    sys.exit(f'error: {where}: unknown config field {key!r} (every field is listed in configs/default.py)')
  except flags.Error as e:
    sys.exit(f'error: {e}')


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  logging.info('JAX %s on %s: %s', jax.__version__, jax.default_backend(), jax.devices())
  try:
    train.train_and_evaluate(_CONFIG.value, _WORKDIR.value)
  except (ConfigError, DataNotFoundError, DataError, FloatingPointError) as e:
    logging.error('%s', e)
    sys.exit(f'error: {e}')


if __name__ == '__main__':
  jax.config.config_with_absl()  # JAX's own options as flags: --jax_compilation_cache_dir=DIR, ...
  app.run(main, flags_parser=parse_flags)
