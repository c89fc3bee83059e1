"""The defaults every config starts from, and the rows of the paper's main table.

Every field, its default, rule and meaning is declared once, on its spec in g2g_jax (the
defaults follow PAPER.md: G2GNet with mixer grouping, G = 8, p = 1, p' = 0.15 (74.4%
sparse), a 4x4 patch-conv front end with 32 channels, 3 hidden layers of 1024, Adam 1e-3
with L2 1e-4, batch 256, 30 epochs, cosine schedule). List them with

  python -m g2g_jax.config

Rows of the paper's main table, selected with `--config=configs/<dataset>.py:<row>`:
  g2g (mixer, the default), g2g_index, g2g_random, er, fc_v1 (dense, width matched to
  G2GNet's active parameters, computed), fc_v2 (dense, same width).
"""

import ml_collections

from g2g_jax.config import default_config

ROWS = {
  'g2g': {'connectivity.kind': 'g2g', 'connectivity.grouping': 'mixer'},
  'g2g_mixer': {'connectivity.kind': 'g2g', 'connectivity.grouping': 'mixer'},
  'g2g_index': {'connectivity.kind': 'g2g', 'connectivity.grouping': 'index'},
  'g2g_random': {'connectivity.kind': 'g2g', 'connectivity.grouping': 'random'},
  'er': {'connectivity.kind': 'er'},
  'fc_v1': {'connectivity.kind': 'dense', 'model.width_rule': 'match_g2g_params'},
  'fc_v2': {'connectivity.kind': 'dense'},
}


def get_config(row: str = 'g2g') -> ml_collections.ConfigDict:
  return apply_row(default_config(), row)


def apply_row(config: ml_collections.ConfigDict, row: str) -> ml_collections.ConfigDict:
  """Sets the fields that make one row of the paper's main table."""
  if row not in ROWS:
    raise ValueError(f'config row {row!r}: expected one of {sorted(ROWS)}')
  for path, value in ROWS[row].items():
    section, name = path.split('.')
    config[section][name] = value
  return config
