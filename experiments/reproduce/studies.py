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
# The config files studies run on: a dataset's (configs/<name>.py), or a model's on one.
DATASETS = ('fashion_mnist', 'cifar10', 'cifar100', 'cifar10_mixer', 'smoke')
MIXER_EPOCHS = 10  # the Mixer study's runs (configs/cifar10_mixer.py): minutes an epoch on a 2-core CPU
MIXER_INIT = ()  # the Mixer study's kernel init: the file's (torch); 'dense / lecun_normal' checks the reference's
CHANNEL_MLPS = (('connectivity.sparse_kernels', 'block_*/channel_mlp/Dense_*/kernel'),)


@dataclasses.dataclass(frozen=True)
class Entry:
  name: str  # label in tables and figures
  row: str  # a row of configs/default.py ROWS
  changes: tuple = ()  # (('section.field', value), ...)
  epochs: int = 30
  family: str = ''  # the line an entry belongs to in a study's figure (the budget study)


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

# The budget study: head parameters near these (0.35M below FC v1, FC v1 0.69M, 1.3M, FC v2
# 2.6M), each family at its better init from the init study (he_normal for every row).
BUDGET_INIT = (('model.kernel_init', 'he_normal'),)
BUDGETS = {'0.35M': 0.35e6, '0.69M': 0.69e6, '1.3M': 1.3e6, '2.6M': 2.6e6}
# Dense widths with those head parameters (conn.param_matched_width), and one wider;
# 0.69M and 2.6M are table 1's FC v1 and FC v2 rows.
DENSE_WIDTHS = (307, 686, 2048)
# (width, budget) of the sparse points. Scattered masks (ER, G2G) cost what the dense layer
# of their width costs on a CPU, so they run at width 1024 only; tiles go wide.
SCATTERED_POINTS = ((1024, '0.35M'), (1024, '1.3M'))
TILED_POINTS = (
  (1024, '0.35M'),
  (1024, '0.69M'),
  (1024, '1.3M'),
  (2048, '0.35M'),
  (2048, '0.69M'),
  (2048, '1.3M'),
  (2048, '2.6M'),
  (4096, '0.35M'),
  (4096, '0.69M'),
  (4096, '1.3M'),
  (4096, '2.6M'),
)


def budget_connectivity(width: int, target_params: float, num_features: int = 512, num_classes: int = 10):
  """(G, p') whose G2G head of 3 hidden layers of `width` has about target_params active params.

  Groups are the power of two nearest 2 / density, so intra-group edges (p = 1) are about
  half of a layer's edges, as at the paper's G = 8, p' = 0.15; p' makes up the rest,
  rounded to 4 decimals.
  """
  import math  # noqa: PLC0415

  from g2g_jax import connectivity as conn  # noqa: PLC0415

  dense_edges = conn.mlp_param_count(num_features, [width] * 3, num_classes) - conn.mlp_param_count(
    num_features, [width] * 3, num_classes, density=0.0
  )
  density = (target_params - conn.mlp_param_count(num_features, [width] * 3, num_classes, 0.0)) / dense_edges
  groups = 2 ** round(math.log2(2 / density))
  p_inter = round((density - 1 / groups) * groups / (groups - 1), 4)
  if not 0 <= p_inter <= 1:
    raise ValueError(f'width {width}: no G2G layout has {target_params:.0f} head params')
  return groups, p_inter


CHALLENGE = (('connectivity.p_inter', 0.19), *BUDGET_INIT)
# Dynamic sparse training as RigL and SET run it: 30% of the edges at first, decaying (cosine)
# to none at 75% of the 5,850 steps, an update every 200 steps; growth by gradient or at random.
_DST = (
  ('rewiring.fraction', 0.3),
  ('rewiring.fraction_schedule', 'cosine'),
  ('rewiring.rewire_every_steps', 200),
  ('rewiring.rewire_end_steps', 4400),
)
RIGL = (('rewiring.prune', 'magnitude'), ('rewiring.grow', 'gradient'), *_DST)
SET = (('rewiring.prune', 'magnitude'), ('rewiring.grow', 'random'), *_DST)


def _budget_entries() -> list:
  entries = [
    Entry(f'dense w={w}', 'fc_v2', (('model.hidden_width', w), *BUDGET_INIT), family='dense') for w in DENSE_WIDTHS
  ]
  entries += [
    Entry('dense w=469 (FC v1)', 'fc_v1', BUDGET_INIT, family='dense'),
    Entry('dense w=1024 (FC v2)', 'fc_v2', BUDGET_INIT, family='dense'),
    Entry('ER w=1024 0.69M', 'er', BUDGET_INIT, family='ER w=1024'),
    Entry('G2G w=1024 0.69M', 'g2g_mixer', BUDGET_INIT, family='G2G scattered w=1024'),
  ]
  for width, budget in SCATTERED_POINTS:
    groups, p_inter = budget_connectivity(width, BUDGETS[budget])
    shape = (('connectivity.num_groups', groups), ('connectivity.p_inter', p_inter), *BUDGET_INIT)
    entries += [
      Entry(f'ER w={width} {budget}', 'er', shape, family=f'ER w={width}'),
      Entry(f'G2G w={width} {budget}', 'g2g_mixer', shape, family=f'G2G scattered w={width}'),
    ]
  for width, budget in TILED_POINTS:
    groups, p_inter = (8, 0.15) if (width, budget) == (1024, '0.69M') else budget_connectivity(width, BUDGETS[budget])
    shape = (('connectivity.num_groups', groups), ('connectivity.p_inter', p_inter), ('connectivity.inter', 'tiles'))
    if width != 1024:
      shape += (('model.hidden_width', width),)
    entries.append(
      Entry(f'G2G tiles w={width} {budget}', 'g2g_mixer', (*shape, *BUDGET_INIT), family=f'G2G tiles w={width}')
    )
  return entries


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
  'budget': _budget_entries(),
  # At most 30% of FC v2's head params (p' = 0.19 at G = 8: 29.5%), against FC v2 (he_normal).
  'challenge': [
    Entry('FC v2', 'fc_v2', BUDGET_INIT),
    Entry("G2G index p'=0.19", 'g2g_index', CHALLENGE),
    Entry("G2G index p'=0.19 + RigL", 'g2g_index', CHALLENGE + RIGL),
    Entry("G2G index p'=0.19 + SET", 'g2g_index', CHALLENGE + SET),
  ],
  # G2G layers in a model that is not an MLP: the Mixer's token- and channel-mixing MLPs, with
  # the controls that make a difference mean something (an ER mask of the same density, dense
  # Mixers narrowed to the same head params) and G2G on the channel-mixing MLPs alone.
  'mixer': [
    Entry(name, row, (*changes, *MIXER_INIT), epochs=MIXER_EPOCHS)
    for name, row, changes in (
      ('dense', 'fc_v2', ()),
      ('G2G', 'g2g_mixer', ()),
      ('ER', 'er', ()),
      ("dense at G2G's head params", 'fc_v1', ()),
      ('G2G channel MLPs', 'g2g_mixer', CHANNEL_MLPS),
      ("dense at channel G2G's head params", 'fc_v1', CHANNEL_MLPS),
      ('G2G tiles', 'g2g_mixer', (('connectivity.inter', 'tiles'),)),
    )
  ]
  + [Entry('dense / lecun_normal', 'fc_v2', (('model.kernel_init', 'lecun_normal'),), epochs=MIXER_EPOCHS)],
}
# The studies that run on each config file (every study but the Mixer's runs on the datasets).
STUDIES_OF = {name: [s for s in STUDIES if s != 'mixer'] for name in DATASETS}
STUDIES_OF['cifar10_mixer'] = ['mixer']
STUDIES_OF['smoke'] = list(STUDIES)


@functools.cache
def load_config_module(dataset: str):
  if dataset not in DATASETS:
    raise ValueError(f'dataset {dataset!r}: expected one of {", ".join(DATASETS)}')
  path = os.path.join(ROOT, 'configs', f'{dataset}.py')
  spec = importlib.util.spec_from_file_location(f'configs_{dataset}', path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


SMOKE_EPOCHS = 3  # the smoke dataset (tests) runs every entry this long: seconds, not minutes


def config_for(dataset: str, entry: Entry, seed: int):
  """The ConfigDict of one run of an entry."""
  config = load_config_module(dataset).get_config(entry.row)
  config.num_epochs = SMOKE_EPOCHS if dataset == 'smoke' else entry.epochs
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
