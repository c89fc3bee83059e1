"""Runs a study of the reproduction for a dataset and a number of seeds, resumably.

  python experiments/reproduce/run.py table1 --dataset=fashion_mnist --seeds=3

Each run is `python -m g2g_jax.main` in its own process, in a work folder named by the
run's key (runs/reproduce/<dataset>/<key>/seed<k>), so an interrupted run resumes from
its last checkpoint. A finished run appends one JSON line to
experiments/results/<dataset>.jsonl; a rerun skips every (key, seed) already there, also
when another study asked for it. Studies are listed in studies.py; `--list` prints them.
"""

import argparse
import datetime
import json
import os
import platform
import resource
import subprocess
import sys
import time

from g2g_jax.experiment import RUNTIME_FIELDS

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import studies  # noqa: E402  (experiments/reproduce/studies.py)

RESULTS_DIR = os.path.join(studies.ROOT, 'experiments', 'results')
WORK_ROOT = os.path.join(studies.ROOT, 'runs', 'reproduce')


def results_path(results_dir: str, dataset: str) -> str:
  return os.path.join(results_dir, f'{dataset}.jsonl')


def read_results(path: str) -> list[dict]:
  if not os.path.exists(path):
    return []
  with open(path) as f:
    return [json.loads(line) for line in f if line.strip()]


def _append(path: str, record: dict):
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with open(path, 'a') as f:  # one write per line: a crash never leaves half a record
    f.write(json.dumps(record, sort_keys=True) + '\n')
    f.flush()
    os.fsync(f.fileno())


def _commit() -> str:
  try:
    out = subprocess.run(['git', 'rev-parse', '--short', 'HEAD'], cwd=studies.ROOT, capture_output=True, text=True)
    dirty = subprocess.run(
      ['git', 'status', '--porcelain', 'g2g_jax', 'configs'], cwd=studies.ROOT, capture_output=True, text=True
    )
    return out.stdout.strip() + ('+dirty' if dirty.stdout.strip() else '')
  except OSError:
    return 'unknown'


def _machine_busy_seconds() -> float:
  """CPU seconds all processes of the machine have used since boot (Linux /proc/stat)."""
  try:
    with open('/proc/stat') as f:
      fields = [float(x) for x in f.readline().split()[1:]]
  except OSError:
    return float('nan')
  idle = fields[3] + (fields[4] if len(fields) > 4 else 0.0)  # idle + iowait
  return (sum(fields[:8]) - idle) / os.sysconf('SC_CLK_TCK')


def _children_cpu_seconds() -> float:
  usage = resource.getrusage(resource.RUSAGE_CHILDREN)
  return usage.ru_utime + usage.ru_stime


def summarize(records: list[dict]) -> dict:
  """What one run's metrics.jsonl says, in the shape of a results line."""
  evals = [r for r in records if r.get('kind', 'eval') == 'eval']
  rewires = [r for r in records if r.get('kind') == 'rewire']
  last = evals[-1]
  steady = evals[1:] or evals  # epoch 1 includes compilation
  return {
    'final_test_accuracy': last['test_accuracy'],
    'best_test_accuracy': last['best_test_accuracy'],
    'test_accuracy_curve': [r['test_accuracy'] for r in evals],
    'train_loss_curve': [r['train_loss'] for r in evals],
    'head_params': last['head_params'],
    'total_params': last['total_params'],
    'sparsity': last['sparsity'],
    'flops_per_example': last['flops_per_example'],
    'data_source': last['data_source'],
    'train_seconds': sum(r['epoch_seconds'] for r in evals),
    'examples_per_sec': sum(r['examples_per_sec'] for r in steady) / len(steady),
    'rewire_updates': len(rewires),
    'rewire_seconds': sum(r['seconds'] for r in rewires),
  }


def save_mask_snapshot(workdir: str, path: str, layer: str):
  """Writes one sparse layer's mask at step 0 and at the end of a run, with its groups."""
  import numpy as np  # noqa: PLC0415 (jax and friends load only when a snapshot is due)
  from flax import traverse_util  # noqa: PLC0415
  from ml_collections import ConfigDict  # noqa: PLC0415

  from g2g_jax import checkpoint, connectivity, train  # noqa: PLC0415

  with open(os.path.join(workdir, 'config.json')) as f:
    config = ConfigDict(json.load(f))
  start = train.make_train_state(config)
  ckpt = checkpoint.Checkpointer(workdir)
  end, _ = ckpt.restore(start)
  ckpt.close()

  (kernel,) = [p for p in connectivity.sparse_layer_paths(start.params) if p[-2] == layer]

  def mask_of(state):
    return np.asarray(traverse_util.flatten_dict(state.masks)[kernel], bool)

  m0, m1 = mask_of(start), mask_of(end)
  groups = start.groups[layer]
  os.makedirs(os.path.dirname(path), exist_ok=True)
  np.savez_compressed(
    path,
    shape=np.asarray(m0.shape),
    start=np.packbits(m0),
    end=np.packbits(m1),
    groups_in=np.asarray(groups['in']),
    groups_out=np.asarray(groups['out']),
    step=np.asarray(int(end.step)),
  )


def run_one(dataset, study, entry, seed, key, changes, results, work_root, extra, timeout):
  workdir = os.path.join(work_root, dataset, key, f'seed{seed}')
  cmd = [
    sys.executable,
    '-m',
    'g2g_jax.main',
    f'--config={os.path.join(studies.ROOT, "configs", dataset + ".py")}:{entry.row}',
    f'--workdir={workdir}',
    f'--config.seed={seed}',
    *studies.overrides(changes),
    '--config.progress=none',
    *extra,
  ]
  t0, busy0, own0 = time.perf_counter(), _machine_busy_seconds(), _children_cpu_seconds()
  print(f'[{datetime.datetime.now():%H:%M:%S}] {study}/{entry.name} seed {seed} ({key}) -> {workdir}', flush=True)
  proc = subprocess.run(cmd, cwd=studies.ROOT, capture_output=True, text=True, timeout=timeout)
  wall = time.perf_counter() - t0
  # Cores kept busy by everything else during the run: timings of a run with a
  # clearly non-zero value were slowed by other work on the machine.
  other_cores = ((_machine_busy_seconds() - busy0) - (_children_cpu_seconds() - own0)) / wall
  if proc.returncode != 0:
    tail = '\n'.join((proc.stderr or proc.stdout).strip().splitlines()[-15:])
    raise RuntimeError(f'{study}/{entry.name} seed {seed} failed (exit {proc.returncode}):\n{tail}')
  import jax  # noqa: PLC0415

  from g2g_jax import metrics  # noqa: PLC0415

  record = {
    'key': key,
    'dataset': dataset,
    'study': study,
    'name': entry.name,
    'row': entry.row,
    'seed': seed,
    'changes': changes,
    'num_epochs': entry.epochs,
    **summarize(metrics.read_records(workdir)),
    'wall_seconds': wall,
    'command': ' '.join(cmd[1:]).replace(studies.ROOT + '/', ''),
    'commit': _commit(),
    'backend': jax.default_backend(),
    'machine': f'{platform.machine()} {os.cpu_count()} cpus',
    'load_avg_1m': os.getloadavg()[0],
    'other_cores': other_cores,
    'finished': datetime.datetime.now(datetime.UTC).isoformat(timespec='seconds'),
  }
  if (study, entry.name) == studies.MASK_ENTRY and seed == 0:
    mask_path = os.path.join(os.path.dirname(results), 'masks', f'{dataset}_{key}_seed0.npz')
    save_mask_snapshot(workdir, mask_path, studies.MASK_LAYER)
    record['mask_snapshot'] = os.path.relpath(mask_path, os.path.dirname(results))
  _append(results, record)
  print(
    f'  final {record["final_test_accuracy"]:.4f} best {record["best_test_accuracy"]:.4f} '
    f'train {record["train_seconds"]:.1f}s wall {wall:.1f}s',
    flush=True,
  )
  return record


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument('study', nargs='?', choices=sorted(studies.STUDIES))
  parser.add_argument('--dataset', default='fashion_mnist', choices=studies.DATASETS)
  parser.add_argument('--seeds', type=int, default=3, help='seeds 0 .. N-1 (default 3)')
  parser.add_argument('--only', action='append', default=[], help='run only this entry name (repeatable)')
  parser.add_argument('--results_dir', default=RESULTS_DIR)
  parser.add_argument('--work_root', default=WORK_ROOT)
  parser.add_argument('--set', action='append', default=[], metavar='FIELD=VALUE', help='extra --config override')
  parser.add_argument('--timeout', type=float, default=4 * 3600, help='seconds allowed for one run')
  parser.add_argument('--list', action='store_true', help='print the studies and their runs, then exit')
  args = parser.parse_args(argv)

  if args.list or args.study is None:
    for name, entries in studies.STUDIES.items():
      print(f'{name}:')
      for e in entries:
        key, changes = studies.run_key(args.dataset, e)
        print(f'  {e.name:<24} {key}  {e.epochs} epochs  {studies.overrides(changes)}')
    return 0
  if args.seeds < 1:
    parser.error(f'--seeds={args.seeds}: must be at least 1')
  entries = studies.STUDIES[args.study]
  unknown = sorted(set(args.only) - {e.name for e in entries})
  if unknown:
    parser.error(f'--only {unknown}: not in study {args.study}; its entries: {[e.name for e in entries]}')
  if args.only:
    entries = [e for e in entries if e.name in args.only]
  extra = []
  for item in args.set:
    if '=' not in item:
      parser.error(f'--set {item!r}: expected FIELD=VALUE')
    field = item.split('=', 1)[0]
    if field not in RUNTIME_FIELDS:
      parser.error(f'--set {item!r}: only runtime fields may be set ({", ".join(RUNTIME_FIELDS)})')
    extra.append(f'--config.{item}')

  results = results_path(args.results_dir, args.dataset)
  done = {(r['key'], r['seed']) for r in read_results(results)}
  todo = []
  for entry in entries:
    key, changes = studies.run_key(args.dataset, entry)
    for seed in range(args.seeds):
      if (key, seed) in done:
        continue
      done.add((key, seed))  # an entry repeated under two names runs once
      todo.append((entry, seed, key, changes))
  print(f'{args.study} on {args.dataset}: {len(todo)} run(s) to do, results in {results}', flush=True)
  for entry, seed, key, changes in todo:
    run_one(args.dataset, args.study, entry, seed, key, changes, results, args.work_root, extra, args.timeout)
  return 0


if __name__ == '__main__':
  sys.exit(main())
