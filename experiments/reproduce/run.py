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
import signal
import subprocess
import sys
import tempfile
import threading
import time
from concurrent import futures

from g2g_jax import interrupts, metrics
from g2g_jax.config import RUNTIME_FIELDS

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import studies  # noqa: E402  (experiments/reproduce/studies.py)

RESULTS_DIR = os.path.join(studies.ROOT, 'experiments', 'results')
WORK_ROOT = os.path.join(studies.ROOT, 'runs', 'reproduce')
# Exit statuses: a run failed (every failure named, one line each); usage; a results file that
# cannot be read; stopped by a signal, each run's last checkpoint saved (as g2g_jax.main).
EXIT_FAILED, EXIT_USAGE, EXIT_DATA = 1, 2, 3
EXIT_SIGNAL = interrupts.EXIT_STATUS
# Fields a run's command may not set: a results line needs the whole run.
STOPS_EARLY = ('halt_after_steps',)
GRACE_SECONDS = 300  # after a timeout's SIGTERM, for the child's checkpoint


def results_path(results_dir: str, dataset: str) -> str:
  return os.path.join(results_dir, f'{dataset}.jsonl')


class RunnerError(Exception):
  """A failure of the runner or of a run: one line, and the exit status it ends with."""

  def __init__(self, message: str, status: int = EXIT_FAILED):
    super().__init__(message)
    self.status = status


def read_results(path: str) -> list[dict]:
  """The results lines of a file, oldest first. A half-written last line (a runner killed while
  appending) is skipped with a warning; any other line that is not a results record is an error
  naming the file and the line."""
  try:
    records, warning = metrics.read_json_lines(path, {'key', 'seed'}, 'results record')
  except metrics.BadLine as e:
    raise RunnerError(f'{e}; fix or remove that line', EXIT_DATA) from None
  if warning:
    print(f'warning: {warning}', file=sys.stderr, flush=True)
  return records


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


class Children:
  """The training processes the runner has started; a signal to the runner is passed on to each,
  and the runner waits for them to save their checkpoints."""

  def __init__(self):
    self.procs, self.signum = set(), None
    self._lock = threading.Lock()

  def handle(self, signum, frame):
    del frame
    self.signum = self.signum or signum
    with self._lock:
      for proc in self.procs:
        if proc.poll() is None:
          proc.send_signal(signum)

  def start(self, cmd, **kwargs) -> subprocess.Popen:
    with self._lock:
      if self.signum is not None:
        raise RunnerError(f'stopped by {signal.Signals(self.signum).name}', EXIT_SIGNAL[self.signum])
      proc = subprocess.Popen(cmd, **kwargs)
      self.procs.add(proc)
      return proc

  def done(self, proc):
    with self._lock:
      self.procs.discard(proc)


CHILDREN = Children()


def _run_child(cmd: list[str], timeout: float) -> tuple[int, str, str, float, bool]:
  """Runs cmd; returns its exit status, stdout, stderr, the CPU seconds it used itself and
  whether it ran out of time. At the timeout it gets SIGTERM (it saves a checkpoint and exits),
  and SIGKILL only GRACE_SECONDS later.

  The CPU time comes from wait4 on this child alone, so runs going at once (--jobs) do not
  count each other's time as their own.
  """
  with tempfile.TemporaryFile('w+') as out, tempfile.TemporaryFile('w+') as err:
    proc = CHILDREN.start(cmd, cwd=studies.ROOT, stdout=out, stderr=err, text=True)
    timed_out = threading.Event()

    def time_up():
      timed_out.set()
      proc.send_signal(signal.SIGTERM)

    timer = threading.Timer(timeout, time_up)
    killer = threading.Timer(timeout + GRACE_SECONDS, proc.kill)
    timer.start()
    killer.start()
    try:
      while True:
        try:
          _, status, usage = os.wait4(proc.pid, 0)
          break
        except InterruptedError:  # a signal to the runner: passed on, keep waiting
          continue
    finally:
      timer.cancel()
      killer.cancel()
      CHILDREN.done(proc)
    proc.returncode = os.waitstatus_to_exitcode(status)  # so Popen does not wait for it again
    out.seek(0)
    err.seek(0)
    return proc.returncode, out.read(), err.read(), usage.ru_utime + usage.ru_stime, timed_out.is_set()


def _keep_log(workdir: str, stderr: str) -> str:
  """Writes a failed run's stderr to WORKDIR/failed.log, and says where ('' if it cannot)."""
  path = os.path.join(workdir, 'failed.log')
  try:
    os.makedirs(workdir, exist_ok=True)
    with open(path, 'w') as f:
      f.write(stderr)
  except OSError:
    return ''
  shown = os.path.relpath(path, studies.ROOT) if path.startswith(studies.ROOT + os.sep) else path
  return f' (its output: {shown})'


def _error_line(stderr: str, stdout: str) -> str:
  """The child's own one-line error, or its last line."""
  errors = [line for line in stderr.splitlines() if line.startswith('error: ')]
  if errors:
    return errors[-1][len('error: ') :]
  tail = [line for line in (stderr or stdout).strip().splitlines() if line.strip()]
  return tail[-1][:300] if tail else 'no output'


def portable(text: str) -> str:
  """Paths in `text` as any clone reads them: the repository's relative, the home folder's as ~."""
  return text.replace(studies.ROOT + '/', '').replace(os.path.expanduser('~') + '/', '~/')


def summarize(records: list[dict], num_epochs: int) -> dict:
  """What one finished run's metrics.jsonl says, in the shape of a results line."""
  evals = metrics.eval_records(records)
  if not evals or evals[-1]['epoch'] != num_epochs:
    where = f'epoch {evals[-1]["epoch"]}' if evals else 'before its first evaluation'
    raise RunnerError(f'the run ended at {where} of {num_epochs}: a results line needs the whole run')
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
    'data_source': portable(last['data_source']),
    'train_seconds': train_seconds,
    'compile_seconds': compile_seconds or 0.0,  # 0: a run that did not record it
    'examples_per_sec': sum(r['examples_per_sec'] for r in steady) / len(steady),
    'rewire_updates': len(rewires),
    'rewire_seconds': sum(r['seconds'] for r in rewires),
  }


def _summary(name: str, workdir: str, num_epochs: int) -> dict:
  try:
    return summarize(metrics.read_records(workdir), num_epochs)
  except RunnerError as e:
    raise RunnerError(f'{name}: {e}') from None
  except OSError as e:  # WorkdirError included: an unreadable metrics.jsonl
    raise RunnerError(f'{name}: {e}', EXIT_DATA) from None


def save_mask_snapshot(workdir: str, path: str, layer: str):
  """Writes one sparse layer's mask at step 0 and at the end of a run, with its groups."""
  import numpy as np  # noqa: PLC0415 (jax and friends load only when a snapshot is due)
  from flax import traverse_util  # noqa: PLC0415

  import g2g_jax  # noqa: PLC0415

  run = g2g_jax.load_run(workdir)
  start, end = g2g_jax.make_train_state(run.config), run.state

  def mask_of(state):
    flat = traverse_util.flatten_dict(state.sparsity.masks)
    (kernel,) = [p for p in flat if p[-2] == layer and flat[p] is not None]
    return np.asarray(flat[kernel], bool)

  m0, m1 = mask_of(start), mask_of(end)
  groups = start.sparsity.groups[layer]
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
  returncode, stdout, stderr, own_cpu, timed_out = _run_child(cmd, timeout)
  wall = time.perf_counter() - t0
  # Cores kept busy by everything else during the run: timings of a run with a
  # clearly non-zero value were slowed by other work on the machine.
  other_cores = ((_machine_busy_seconds() - busy0) - own_cpu) / wall
  name = f'{study}/{entry.name} seed {seed}'
  if returncode in EXIT_SIGNAL.values() and CHILDREN.signum is not None:
    raise RunnerError(f'{name} stopped ({_error_line(stderr, stdout)})', EXIT_SIGNAL[CHILDREN.signum])
  if timed_out:
    raise RunnerError(f'{name} ran out of its {timeout:g} s (--timeout) and stopped: rerun to resume it')
  if returncode != 0:
    log = _keep_log(workdir, stderr)
    raise RunnerError(f'{name} failed (exit {returncode}): {_error_line(stderr, stdout)}{log}')
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
    **_summary(name, workdir, config.num_epochs),
    'wall_seconds': wall,
    'command': portable(' '.join(cmd[1:])),
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


class _Parser(argparse.ArgumentParser):
  def error(self, message):  # one line, as every other failure
    raise RunnerError(message, EXIT_USAGE)


def main(argv=None):
  parser = _Parser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
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
    allowed = [f for f in RUNTIME_FIELDS if f not in STOPS_EARLY]
    if field not in allowed:
      why = 'it stops a run before its end' if field in STOPS_EARLY else 'only runtime fields may be set'
      parser.error(f'--set {item!r}: {why} ({", ".join(allowed)})')
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

  failures, outcomes = [], []
  with futures.ThreadPoolExecutor(args.jobs) as pool:
    pending = [pool.submit(go, item) for item in todo[: args.jobs]]
    queue = todo[args.jobs :]
    while pending:  # one more run starts as one ends; a failure with --jobs=1 stops the study
      fut = pending.pop(0)
      try:
        outcomes.append(fut.result())
      except RunnerError as e:
        failures.append(e)
        if args.jobs == 1 or e.status != EXIT_FAILED:
          queue = []
      if queue:
        pending.append(pool.submit(go, queue.pop(0)))
  for e in failures:
    print(f'error: {e}', file=sys.stderr, flush=True)
  skipped = outcomes.count('skipped')
  if skipped:
    print(f'{skipped} run(s) not started: --stop_after={args.stop_after:g} s had passed', flush=True)
  return max((e.status for e in failures), default=0)


def cli() -> int:
  """main() with the runner's signals passed on to its runs, and every failure in one line."""
  for signum in EXIT_SIGNAL:
    signal.signal(signum, CHILDREN.handle)
  try:
    return main()
  except RunnerError as e:
    print(f'error: {e}', file=sys.stderr, flush=True)
    return e.status


if __name__ == '__main__':
  sys.exit(cli())
