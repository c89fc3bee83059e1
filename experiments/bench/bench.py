"""Train-step speed of the dense, masked and tiled layers, side by side in one run.

  python experiments/bench/bench.py                       # widths 1024 and 4096, density 25%
  python experiments/bench/bench.py --widths=256 --steps=3 --repeats=1   # a quick check

For each width, three G2GNet models that differ only in their hidden layers: `dense`
(FC, connectivity.kind='dense'), `masked` (G2G, p = 1, p' = 0.15, scattered inter edges,
a dense kernel whose pruned weights are 0) and `tiles` (the same G2G density as tiles,
connectivity.inter='tiles'). Each runs the real jitted train_step (forward, backward,
masking, Adam) on one fixed batch. Variants are timed in turns (dense, masked, tiles,
dense, ...), `repeats` rounds of `steps` steps each, and the median round is reported.
Prints a table, then one JSON line with every figure.
"""

import functools
import json
import statistics
import sys
import time

import jax
import numpy as np
from absl import app, flags

sys.path.insert(0, __file__.rsplit('/experiments/', 1)[0])
from configs import default  # noqa: E402
from g2g_jax import connectivity as conn  # noqa: E402
from g2g_jax import train  # noqa: E402

_WIDTHS = flags.DEFINE_list('widths', ['1024', '4096'], 'Hidden widths to measure.')
_BATCH = flags.DEFINE_integer('batch_size', 256, 'Examples per step.')
_STEPS = flags.DEFINE_integer('steps', 10, 'Steps per timed round.')
_REPEATS = flags.DEFINE_integer('repeats', 5, 'Timed rounds per variant (median reported).')
_TILE = flags.DEFINE_integer('tile_size', 0, 'Tile side for the tiled variant; 0 = one tile per group side.')

VARIANTS = {
  'dense': {'connectivity.kind': 'dense'},
  'masked': {'connectivity.kind': 'g2g', 'connectivity.inter': 'bernoulli'},
  'tiles': {'connectivity.kind': 'g2g', 'connectivity.inter': 'tiles'},
}


def make_config(width: int, variant: str):
  config = default.get_config('g2g')
  config.data.name = 'fashion_mnist'
  config.data.source = 'synthetic'
  config.batch_size = _BATCH.value
  config.model.hidden_width = width
  config.connectivity.grouping = 'index'
  config.connectivity.tile_size = _TILE.value
  for path, value in VARIANTS[variant].items():
    section, field = path.split('.')
    config[section][field] = value
  return config


def setup(width: int, variant: str):
  config = make_config(width, variant)
  state = train.make_train_state(config)
  acct = conn.accounting(state.params, state.sparsity.masks, {'encoder/*': 16}, 'head/*', state.sparsity.layout)
  rng = np.random.default_rng(0)
  batch = {
    'image': rng.integers(0, 256, (_BATCH.value, 28, 28, 1), dtype=np.uint8),
    'label': rng.integers(0, 10, _BATCH.value).astype(np.int32),
  }
  step = functools.partial(train.train_step, augment='none', crop_padding=0)
  step = jax.jit(step, donate_argnums=0)
  state, m = step(state, batch)  # compile
  jax.block_until_ready(m)
  return {'step': step, 'state': state, 'batch': jax.device_put(batch), 'acct': acct}


def time_round(v: dict) -> float:
  state = v['state']
  t0 = time.perf_counter()
  for _ in range(_STEPS.value):
    state, m = v['step'](state, v['batch'])
  jax.block_until_ready(m)
  v['state'] = state
  return (time.perf_counter() - t0) / _STEPS.value


def main(argv):
  del argv
  print(f'JAX {jax.__version__}, backend {jax.default_backend()}, devices {jax.devices()}')
  print(f'batch {_BATCH.value}, {_STEPS.value} steps x {_REPEATS.value} rounds, tile {_TILE.value}')
  results = []
  for width in map(int, _WIDTHS.value):
    built = {name: setup(width, name) for name in VARIANTS}
    rounds = {name: [] for name in VARIANTS}
    for _ in range(_REPEATS.value):
      for name, v in built.items():
        rounds[name].append(time_round(v))
    dense_s = statistics.median(rounds['dense'])
    for name, v in built.items():
      s = statistics.median(rounds[name])
      results.append(
        {
          'width': width,
          'variant': name,
          'step_ms': 1000 * s,
          'examples_per_sec': _BATCH.value / s,
          'speedup_vs_dense': dense_s / s,
          'density': v['acct']['density'],
          'head_params': v['acct']['head_params'],
          'rounds_ms': [1000 * r for r in rounds[name]],
        }
      )
  print(f'{"width":>6} {"variant":>8} {"density":>8} {"step ms":>9} {"ex/s":>9} {"x dense":>8}')
  for r in results:
    print(
      f'{r["width"]:6d} {r["variant"]:>8} {r["density"]:8.4f} {r["step_ms"]:9.2f} '
      f'{r["examples_per_sec"]:9.0f} {r["speedup_vs_dense"]:8.2f}'
    )
  print(json.dumps({'backend': jax.default_backend(), 'device': str(jax.devices()[0]), 'results': results}))


if __name__ == '__main__':
  app.run(main)
