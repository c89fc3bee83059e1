"""Fingerprints of a fixed set of short runs: what a refactor must leave bit-identical.

  python experiments/fingerprint/fingerprint.py --out=/tmp/before.json
  (change the code)
  python experiments/fingerprint/fingerprint.py --out=/tmp/after.json --compare=/tmp/before.json

Each run trains through `train_and_evaluate` in a fresh workdir, then hashes the bytes of
every array of its last checkpoint's state (params, optimizer state, masks, layout, key)
and keeps every number of its metrics records (timings excepted). Two fingerprints are
identical when the states are and every number both have is; numbers one side lacks (a
new field) are counted, not compared. Real data comes from where
the run's config finds it (Fashion-MNIST from Debian's package, CIFAR-10 under
~/.cache/g2g_jax); a run whose data is missing is reported as skipped, not hashed.
`--only=NAME` runs a subset; `--list` names the runs.
"""

import argparse
import hashlib
import json
import os
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, ROOT)

TIMING = ('examples_per_sec', 'epoch_seconds', 'compile_seconds', 'seconds', 'rewire_seconds', 'rewire_time_share')


def _smoke(row='g2g', **changes):
  return ('smoke', row, 0, changes)


def _real(name, row='g2g', epochs=1, **changes):
  return (name, row, epochs, changes)


# name -> (config file, row, epochs (0: the file's), {'section.field': value})
RUNS = {
  'smoke_steps': _smoke(),
  'smoke_scan': _smoke(loop='scan'),
  'smoke_tiles': _smoke(**{'connectivity.inter': 'tiles'}),
  'smoke_fc_v1': _smoke('fc_v1'),
  'smoke_er': _smoke('er'),
  'smoke_set': _smoke(**{'rewiring.prune': 'magnitude', 'rewiring.grow': 'random', 'rewiring.rewire_every_steps': 4}),
  'smoke_hebbian': _smoke(
    **{'rewiring.prune': 'hebbian', 'rewiring.grow': 'hebbian', 'rewiring.rewire_every_steps': 5, 'loop': 'scan'}
  ),
  'smoke_rigl_cosine': _smoke(
    **{
      'rewiring.prune': 'mixed',
      'rewiring.grow': 'gradient',
      'rewiring.fraction_schedule': 'cosine',
      'rewiring.rewire_every_steps': 3,
      'rewiring.hebbian_batches': 2,
    }
  ),
  'smoke_tiles_dst': _smoke(
    **{
      'connectivity.inter': 'tiles',
      'connectivity.tile_density': 0.5,
      'rewiring.prune': 'magnitude',
      'rewiring.grow': 'random',
      'rewiring.rewire_every_steps': 4,
    }
  ),
  'smoke_2_seeds': _smoke(**{'num_seeds': 2, 'rewiring.prune': 'random', 'rewiring.grow': 'hebbian'}),
  'fashion_mnist_g2g': _real('fashion_mnist'),
  'fashion_mnist_tiles': _real('fashion_mnist', **{'connectivity.inter': 'tiles'}),
  'fashion_mnist_dst': _real('dst', epochs=2, **{'rewiring.rewire_every_steps': 200}),
  'cifar10_g2g_index': _real('cifar10', 'g2g_index'),
  'mixer_g2g': _real('cifar10_mixer', **{'data.source': 'synthetic', 'data.synthetic_num_train': 2048}),
  'mixer_dense': _real('cifar10_mixer', 'fc_v2', **{'data.source': 'synthetic', 'data.synthetic_num_train': 2048}),
}


def make_config(name):
  import importlib.util  # noqa: PLC0415

  file, row, epochs, changes = RUNS[name]
  spec = importlib.util.spec_from_file_location(f'cfg_{file}', os.path.join(ROOT, 'configs', f'{file}.py'))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  config = module.get_config(row)
  if epochs:
    config.num_epochs = epochs
  config.progress = 'none'
  for path, value in changes.items():
    node = config
    *parents, field = path.split('.')
    for p in parents:
      node = node[p]
    node[field] = value
  return config


def _numbers(obj, prefix=''):
  """(path, value) of every number in a record, in a fixed order; timings left out."""
  if isinstance(obj, dict):
    for k in sorted(obj):
      if k.split('/')[-1] not in TIMING:
        yield from _numbers(obj[k], f'{prefix}/{k}')
  elif isinstance(obj, (list, tuple)):
    for i, v in enumerate(obj):
      yield from _numbers(v, f'{prefix}[{i}]')
  elif isinstance(obj, (int, float)) and not isinstance(obj, bool):
    yield prefix, repr(obj)


def fingerprint(name) -> dict:
  import jax  # noqa: PLC0415
  import numpy as np  # noqa: PLC0415

  import g2g_jax  # noqa: PLC0415
  from g2g_jax import data  # noqa: PLC0415

  config = make_config(name)
  with tempfile.TemporaryDirectory() as workdir:
    try:
      g2g_jax.train_and_evaluate(config, workdir)
    except data.DataNotFoundError as e:
      return {'skipped': str(e)[:200]}
    run = g2g_jax.load_run(workdir)
  state = {}
  for path, leaf in jax.tree_util.tree_flatten_with_path(run.state)[0]:
    key = jax.tree_util.keystr(path).replace('.sparsity.', '.')  # the same leaf before Sparsity moved into the state
    if 'key' in key.split('.')[-1] and getattr(leaf, 'dtype', None) is not None and 'key' in str(leaf.dtype):
      leaf = jax.random.key_data(leaf)
    state[key] = hashlib.sha1(np.ascontiguousarray(np.asarray(leaf)).tobytes()).hexdigest()[:16]
  numbers = dict(_numbers(run.records))
  final = [r for r in run.records if r.get('kind', 'eval') == 'eval'][-1]
  return {
    'state': hashlib.sha1(json.dumps(sorted(state.items())).encode()).hexdigest()[:16],
    'records': hashlib.sha1(json.dumps(sorted(numbers.items())).encode()).hexdigest()[:16],
    'numbers': numbers,
    'test_accuracy': final['test_accuracy'],
    'train_loss': final['train_loss'],
    'leaves': state,
  }


def main():
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument('--out', required=False)
  parser.add_argument('--compare', default=None, help='a previous --out file: print what differs')
  parser.add_argument('--only', action='append', default=[])
  parser.add_argument('--list', action='store_true')
  args = parser.parse_args()
  if args.list:
    print('\n'.join(RUNS))
    return 0
  names = args.only or list(RUNS)
  results = {}
  for name in names:
    results[name] = fingerprint(name)
    r = results[name]
    line = r.get('skipped') or f'state {r["state"]} records {r["records"]} test acc {r["test_accuracy"]!r}'
    print(f'{name:<22} {line}', flush=True)
  if args.out:
    with open(args.out, 'w') as f:
      json.dump(results, f, indent=1, sort_keys=True)
  if args.compare:
    with open(args.compare) as f:
      before = json.load(f)
    differ = 0
    for name, r in results.items():
      b = before.get(name)
      if b is None or 'skipped' in r or 'skipped' in b:
        print(f'{name}: not compared')
        continue
      common = set(r['numbers']) & set(b['numbers'])
      moved = sorted(k for k in common if r['numbers'][k] != b['numbers'][k])
      same = r['state'] == b['state'] and not moved
      differ += not same
      leaves = sorted(k for k in set(r['leaves']) | set(b['leaves']) if r['leaves'].get(k) != b['leaves'].get(k))
      added, gone = len(set(r['numbers']) - common), len(set(b['numbers']) - common)
      print(
        f'{name}: {"identical" if same else "DIFFERS"}'
        + (f' (numbers added {added}, removed {gone})' if added or gone else '')
        + (f' (leaves: {leaves[:6]})' if leaves else '')
        + (f' (numbers: {moved[:6]})' if moved else '')
      )
    print(f'{len(results) - differ} of {len(results)} identical')
    return 1 if differ else 0
  return 0


if __name__ == '__main__':
  sys.exit(main())
