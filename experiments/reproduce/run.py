"""Runs a study of the reproduction for a dataset and a number of seeds, resumably.

  python experiments/reproduce/run.py table1 --dataset=fashion_mnist --seeds=3
  python experiments/reproduce/run.py dst p_sweep --seeds=3 --jobs=8   # several at once (a GPU)

Each run is `python -m g2g_jax.main` in its own process, in a work folder named by the
run's key (runs/reproduce/<dataset>/<key>/seed<k>), so an interrupted run resumes from
its last checkpoint. A finished run appends one JSON line to
experiments/results/<dataset>.jsonl; a rerun skips every (key, seed) already there, also
when another study asked for it. Studies are listed in studies.py; `--list` prints them.
With --jobs=N, N runs go at once (on a GPU, whose small steps leave it mostly idle); their
timings then count each other as other work (`other_cores`, marked in the report). The
runs share JAX's persistent compilation cache (WORK_ROOT/jax_cache; --jax_cache), so
only the first run of each shape compiles.
"""

import argparse
import datetime
import fcntl
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
import threading
import time
from concurrent import futures

from g2g_jax import metrics
from g2g_jax.config import RUNTIME_FIELDS

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


_APPEND_LOCK = threading.Lock()


def _append(path: str, record: dict):
  os.makedirs(os.path.dirname(path), exist_ok=True)
  # One write per line, under a thread lock (runs of --jobs finish together) and a file
  # lock (shards on other machines append to the same file on a shared filesystem): a
  # crash or a neighbour never leaves half a record or mixes two.
  with _APPEND_LOCK, open(path, 'a') as f:
    fcntl.flock(f, fcntl.LOCK_EX)
    try:
      f.write(json.dumps(record, sort_keys=True) + '\n')
      f.flush()
      os.fsync(f.fileno())
    finally:
      fcntl.flock(f, fcntl.LOCK_UN)


def _commit() -> str:
  """The checkout's commit. G2G_COMMIT, when set, names it instead: for a copy of the tree
  whose git metadata, if any, may not match its files (a lent GPU machine's copy)."""
  if os.environ.get('G2G_COMMIT'):
    return os.environ['G2G_COMMIT']
  try:
    out = subprocess.run(['git', 'rev-parse', '--short', 'HEAD'], cwd=studies.ROOT, capture_output=True, text=True)
    dirty = subprocess.run(
      ['git', 'status', '--porcelain', 'g2g_jax', 'configs'], cwd=studies.ROOT, capture_output=True, text=True
    )
  except OSError:
    return 'unknown'
  if out.returncode != 0:
    return 'unknown'
  return out.stdout.strip() + ('+dirty' if dirty.stdout.strip() else '')


def _machine_busy_seconds() -> float:
  """CPU seconds all processes of the machine have used since boot (Linux /proc/stat)."""
  try:
    with open('/proc/stat') as f:
      fields = [float(x) for x in f.readline().split()[1:]]
  except OSError:
    return float('nan')
  idle = fields[3] + (fields[4] if len(fields) > 4 else 0.0)  # idle + iowait
  return (sum(fields[:8]) - idle) / os.sysconf('SC_CLK_TCK')


def _run_child(cmd: list[str], timeout: float) -> tuple[int, str, str, float]:
  """Runs cmd; returns its exit status, stdout, stderr and the CPU seconds it used itself.

  The CPU time comes from wait4 on this child alone, so runs going at once (--jobs) do not
  count each other's time as their own.
  """
  with tempfile.TemporaryFile('w+') as out, tempfile.TemporaryFile('w+') as err:
    proc = subprocess.Popen(cmd, cwd=studies.ROOT, stdout=out, stderr=err, text=True)
    timer = threading.Timer(timeout, proc.kill)
    timer.start()
    try:
      _, status, usage = os.wait4(proc.pid, 0)
    finally:
      timer.cancel()
    proc.returncode = os.waitstatus_to_exitcode(status)  # so Popen does not wait for it again
    if timer.finished.is_set() and proc.returncode < 0:
      raise subprocess.TimeoutExpired(cmd, timeout)
    out.seek(0)
    err.seek(0)
    return proc.returncode, out.read(), err.read(), usage.ru_utime + usage.ru_stime


def summarize(records: list[dict]) -> dict:
  """What one run's metrics.jsonl says, in the shape of a results line."""
  evals = metrics.eval_records(records)
  compile_seconds, train_seconds = metrics.run_seconds(records)
  rewires = [r for r in records if r.get('kind') == 'rewire']
  last = evals[-1]
  steady = evals[1:] or evals  # from epoch 2 (in early runs, epoch 1 included compiling)
  return {
    'final_test_accuracy': last['test_accuracy'],
    'best_test_accuracy': last['best_test_accuracy'],
    'test_accuracy_curve': [r['test_accuracy'] for r in evals],
    'train_loss_curve': [r['train_loss'] for r in evals],
    'head_params': last['head_params'],
    'total_params': last['total_params'],
    'sparsity': last['sparsity'],
    'layer_density': last.get('layer_density'),  # None: a run from before records had it
    'flops_per_example': last['flops_per_example'],
    'data_source': last['data_source'],
    'train_seconds': train_seconds,
    'compile_seconds': compile_seconds or 0.0,  # 0: a run that did not record it
    'examples_per_sec': sum(r['examples_per_sec'] for r in steady) / len(steady),
    'rewire_updates': len(rewires),
    'rewire_seconds': sum(r['seconds'] for r in rewires),
  }


def save_mask_snapshot(workdir: str, path: str, layer: str):
  """Writes one sparse layer's mask at step 0 and at the end of a run, with its groups."""
  import numpy as np  # noqa: PLC0415 (jax and friends load only when a snapshot is due)
  from flax import traverse_util  # noqa: PLC0415

  import g2g_jax  # noqa: PLC0415

  run = g2g_jax.load_run(workdir)
  start, end = g2g_jax.make_train_state(run.config), run.state

  def mask_of(state):
    flat = traverse_util.flatten_dict(state.masks)
    (kernel,) = [p for p in flat if p[-2] == layer and flat[p] is not None]
    return np.asarray(flat[kernel], bool)

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
  config = studies.config_for(dataset, entry, seed)
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
  t0, busy0 = time.perf_counter(), _machine_busy_seconds()
  print(f'[{datetime.datetime.now():%H:%M:%S}] {study}/{entry.name} seed {seed} ({key}) -> {workdir}', flush=True)
  returncode, stdout, stderr, own_cpu = _run_child(cmd, timeout)
  wall = time.perf_counter() - t0
  # Cores kept busy by everything else during the run: timings of a run with a
  # clearly non-zero value were slowed by other work on the machine.
  other_cores = ((_machine_busy_seconds() - busy0) - own_cpu) / wall
  if returncode != 0:
    tail = '\n'.join((stderr or stdout).strip().splitlines()[-15:])
    raise RuntimeError(f'{study}/{entry.name} seed {seed} failed (exit {returncode}):\n{tail}')
  # The run's own backend, from its log line 'JAX <version> on <backend>: <devices>': the
  # runner starts no backend of its own (on a GPU that would hold memory the runs need).
  said = re.search(r'JAX \S+ on (\w+):', stderr)

  record = {
    'key': key,
    'dataset': dataset,
    'study': study,
    'name': entry.name,
    'row': entry.row,
    'seed': seed,
    'changes': changes,
    'kernel_init': config.model.kernel_init,
    'num_epochs': config.num_epochs,
    **summarize(metrics.read_records(workdir)),
    'wall_seconds': wall,
    'command': ' '.join(cmd[1:]).replace(studies.ROOT + '/', ''),
    'commit': _commit(),
    'backend': said.group(1) if said else 'unknown',
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
  parser.add_argument('study', nargs='*', help=f'one or more of {", ".join(studies.STUDIES)}')
  parser.add_argument('--dataset', default='fashion_mnist', choices=studies.DATASETS)
  parser.add_argument('--seeds', type=int, default=3, help='seeds 0 .. N-1 (default 3)')
  parser.add_argument('--only', action='append', default=[], help='run only this entry name (repeatable)')
  parser.add_argument('--results_dir', default=RESULTS_DIR)
  parser.add_argument('--work_root', default=WORK_ROOT)
  parser.add_argument('--set', action='append', default=[], metavar='FIELD=VALUE', help='extra --config override')
  parser.add_argument('--timeout', type=float, default=4 * 3600, help='seconds allowed for one run')
  parser.add_argument('--first_seed', type=int, default=0, help='skip seeds below this one (default 0)')
  parser.add_argument('--jobs', type=int, default=1, help='runs at once (default 1)')
  parser.add_argument(
    '--jax_cache',
    default=None,
    help="JAX's persistent compilation cache for the runs (default WORK_ROOT/jax_cache; '' = none): "
    "runs of the same shapes (other seeds, other p') then skip compiling",
  )
  parser.add_argument(
    '--stop_after', type=float, default=None, help='start no run later than this many seconds after launch'
  )
  parser.add_argument(
    '--shard',
    default='0/1',
    metavar='K/N',
    help='run only the K-th of N disjoint parts of the runs (K = 0 .. N-1), e.g. a SLURM job array: '
    '--shard=$SLURM_ARRAY_TASK_ID/$SLURM_ARRAY_TASK_COUNT with --array=0-(N-1)',
  )
  parser.add_argument('--list', action='store_true', help='print the studies and their runs, then exit')
  args = parser.parse_args(argv)

  t_launch = time.perf_counter()
  if args.list or not args.study:
    for name, entries in studies.STUDIES.items():
      print(f'{name}:')
      for e in entries:
        key, changes = studies.run_key(args.dataset, e)
        print(f'  {e.name:<24} {key}  {e.epochs} epochs  {studies.overrides(changes)}')
    return 0
  bad = [s for s in args.study if s not in studies.STUDIES]
  if bad:
    parser.error(f'study {bad}: expected one or more of {", ".join(studies.STUDIES)}')
  elsewhere = [s for s in args.study if s not in studies.STUDIES_OF[args.dataset]]
  if elsewhere:
    parser.error(
      f'study {elsewhere} does not run on {args.dataset}: its studies are {studies.STUDIES_OF[args.dataset]}'
    )
  if args.seeds < 1:
    parser.error(f'--seeds={args.seeds}: must be at least 1')
  if not 0 <= args.first_seed < args.seeds:
    parser.error(f'--first_seed={args.first_seed}: must be at least 0 and below --seeds={args.seeds}')
  if args.jobs < 1:
    parser.error(f'--jobs={args.jobs}: must be at least 1')
  try:
    shard, shards = (int(x) for x in args.shard.split('/'))
    if not 0 <= shard < shards:
      raise ValueError
  except ValueError:
    parser.error(f'--shard={args.shard}: expected K/N with 0 <= K < N, e.g. --shard=0/4')
  entries = [(study, e) for study in args.study for e in studies.STUDIES[study]]
  unknown = sorted(set(args.only) - {e.name for _, e in entries})
  if unknown:
    names = [e.name for _, e in entries]
    parser.error(f'--only {unknown}: not in study {" ".join(args.study)}; its entries: {names}')
  if args.only:
    entries = [(study, e) for study, e in entries if e.name in args.only]
  extra = []
  for item in args.set:
    if '=' not in item:
      parser.error(f'--set {item!r}: expected FIELD=VALUE')
    field = item.split('=', 1)[0]
    if field not in RUNTIME_FIELDS:
      parser.error(f'--set {item!r}: only runtime fields may be set ({", ".join(RUNTIME_FIELDS)})')
    extra.append(f'--config.{item}')
  cache = os.path.join(args.work_root, 'jax_cache') if args.jax_cache is None else args.jax_cache
  if cache:
    extra += [f'--jax_compilation_cache_dir={os.path.abspath(cache)}', '--jax_persistent_cache_min_compile_time_secs=0']

  results = results_path(args.results_dir, args.dataset)
  runs, seen = [], set()
  for seed in range(args.first_seed, args.seeds):  # seed by seed: a sitting cut short leaves whole seeds done
    for study, entry in entries:
      key, changes = studies.run_key(args.dataset, entry)
      if (key, seed) not in seen:  # an entry repeated under two names runs once
        seen.add((key, seed))
        runs.append((study, entry, seed, key, changes))
  # The shard's part of every run, done or not: the same split whatever has finished
  # meanwhile, on any machine.
  done = {(r['key'], r['seed']) for r in read_results(results)}
  todo = [item for i, item in enumerate(runs) if i % shards == shard and (item[3], item[2]) not in done]
  part = f' (shard {shard} of {shards})' if shards > 1 else ''
  print(f'{" ".join(args.study)} on {args.dataset}{part}: {len(todo)} run(s) to do, results in {results}', flush=True)

  def go(item):
    study, entry, seed, key, changes = item
    if args.stop_after is not None and time.perf_counter() - t_launch > args.stop_after:
      return 'skipped'
    if (key, seed) in {(r['key'], r['seed']) for r in read_results(results)}:
      return 'done'  # finished meanwhile by another runner of the same part
    run_one(args.dataset, study, entry, seed, key, changes, results, args.work_root, extra, args.timeout)
    return 'done'

  if args.jobs == 1:
    outcomes = [go(item) for item in todo]  # the first failure stops the study
  else:
    failures, outcomes = [], []
    with futures.ThreadPoolExecutor(args.jobs) as pool:
      for item, fut in [(item, pool.submit(go, item)) for item in todo]:
        try:
          outcomes.append(fut.result())
        except Exception as e:  # noqa: BLE001 (report every failed run, keep the others)
          failures.append(f'{item[0]}/{item[1].name} seed {item[2]}: {e}')
    if failures:
      print(f'{len(failures)} run(s) failed:\n' + '\n'.join(failures), file=sys.stderr, flush=True)
      return 1
  skipped = outcomes.count('skipped')
  if skipped:
    print(f'{skipped} run(s) not started: --stop_after={args.stop_after:g} s had passed', flush=True)
  return 0


if __name__ == '__main__':
  sys.exit(main())
