"""The studies of the reproduction, and the key that names one training run.

A study is a list of named entries; an entry is a row of the paper's main table
(configs/default.py ROWS) plus config changes and an epoch count. Every entry runs once
per seed. A run is identified by its key: the dataset and the config fields in which it
differs from configs/<dataset>.py, so two studies that ask for the same training (the
table1 G2G mixer row and the tiles study's scattered row, for example) share one run.
"""

import dataclasses
import functools
import hashlib
import importlib.util
import json
import os

from g2g_jax.config import changed_fields

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DATASETS = ('fashion_mnist', 'cifar10', 'cifar100', 'smoke')


@dataclasses.dataclass(frozen=True)
class Entry:
  name: str  # label in tables and figures
  row: str  # a row of configs/default.py ROWS
  changes: tuple = ()  # (('section.field', value), ...)
  epochs: int = 30


PRUNES = ('magnitude', 'random', 'hebbian', 'mixed')
GROWS = ('random', 'hebbian', 'gradient')
P_INTERS = (0.0, 0.05, 0.10, 0.15, 0.20, 0.25)
GROUPINGS = ('index', 'random', 'mixer')
KERNEL_INITS = ('torch', 'he_normal', 'lecun_normal')
TABLE1 = (('FC v1', 'fc_v1'), ('FC v2', 'fc_v2'), ('ER', 'er'), ('G2G index', 'g2g_index'), ('G2G mixer', 'g2g_mixer'))
# The Hebbian DST run whose mask is kept at the start and the end (seed 0): the
# paper-style preset, mixed pruning and Hebbian growth.
MASK_ENTRY = ('dst', 'mixed_hebbian')
MASK_LAYER = 'hidden_1'  # the middle sparse layer: under mixer, contiguous in, interleaved out

STUDIES = {
  'table1': [Entry(name, row) for name, row in TABLE1],
  # table1's rows under each kernel initialisation (the paper does not give one)
  'init': [
    Entry(f'{name} / {init}', row, (('model.kernel_init', init),)) for init in KERNEL_INITS for name, row in TABLE1
  ],
  'p_sweep': [
    Entry(f'{grouping} p={p:.2f}', f'g2g_{grouping}', (('connectivity.p_inter', p),), epochs=20)
    for grouping in GROUPINGS
    for p in P_INTERS
  ]
  + [Entry('FC v2', 'fc_v2', epochs=20)],  # the dense line of the p' figure
  'dst': [Entry('static', 'g2g_mixer', epochs=20)]
  + [
    Entry(f'{prune}_{grow}', 'g2g_mixer', (('rewiring.prune', prune), ('rewiring.grow', grow)), epochs=20)
    for prune in PRUNES
    for grow in GROWS
  ],
  'tiles': [
    Entry('scattered (bernoulli)', 'g2g_mixer'),
    Entry('tiles', 'g2g_mixer', (('connectivity.inter', 'tiles'),)),
  ],
}


@functools.cache
def load_config_module(dataset: str):
  if dataset not in DATASETS:
    raise ValueError(f'dataset {dataset!r}: expected one of {", ".join(DATASETS)}')
  path = os.path.join(ROOT, 'configs', f'{dataset}.py')
  spec = importlib.util.spec_from_file_location(f'configs_{dataset}', path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def config_for(dataset: str, entry: Entry, seed: int):
  """The ConfigDict of one run of an entry."""
  config = load_config_module(dataset).get_config(entry.row)
  config.num_epochs = entry.epochs
  config.seed = seed
  for path, value in entry.changes:
    section, field = path.split('.')
    config[section][field] = value
  return config


def run_key(dataset: str, entry: Entry) -> tuple[str, dict]:
  """(key, changes): changes are the fields in which the entry's config differs from
  configs/<dataset>.py (seed aside); the key is a short hash of them and the dataset."""
  base = load_config_module(dataset).get_config()
  mine = config_for(dataset, entry, seed=base.seed)
  changes = {field: new for field, (_, new) in changed_fields(base.to_dict(), mine.to_dict()).items()}
  blob = json.dumps({'dataset': dataset, 'changes': changes}, sort_keys=True)
  return hashlib.sha1(blob.encode()).hexdigest()[:12], changes


def overrides(changes: dict) -> list[str]:
  """--config.X=V flags that make a run's changes on the command line."""
  return [f'--config.{k}={v}' for k, v in sorted(changes.items())]
