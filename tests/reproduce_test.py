"""The reproduction runner and report (experiments/reproduce), on the smoke config."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
REPRO = os.path.join(ROOT, 'experiments', 'reproduce')
sys.path.insert(0, REPRO)
import studies  # noqa: E402


def script(name, *args):
  return subprocess.run(
    [sys.executable, os.path.join(REPRO, name), *args], cwd=ROOT, capture_output=True, text=True, timeout=600
  )


def lines(path):
  with open(path) as f:
    return [json.loads(line) for line in f]


def test_run_keys_share_identical_trainings_and_ignore_runtime_fields():
  by_name = {(s, e.name): e for s, entries in studies.STUDIES.items() for e in entries}
  key = lambda s, n: studies.run_key('fashion_mnist', by_name[(s, n)])[0]  # noqa: E731
  assert key('table1', 'G2G mixer') == key('tiles', 'scattered (bernoulli)')
  assert key('dst', 'static') == key('p_sweep', 'mixer p=0.15')  # p' = 0.15 is the default: no change
  assert key('table1', 'G2G mixer') != key('dst', 'static')  # 30 against 20 epochs
  assert key('table1', 'ER') == key('init', 'ER / torch')  # torch is the default init
  assert key('init', 'ER / torch') != key('init', 'ER / he_normal')
  assert len({key(s, n) for s, n in by_name}) == len(by_name) - 2 - len(studies.TABLE1) - 4 - 1  # budget 4, challenge 1
  _, changes = studies.run_key('fashion_mnist', by_name[('dst', 'mixed_hebbian')])
  assert changes == {'num_epochs': 20, 'rewiring.prune': 'mixed', 'rewiring.grow': 'hebbian'}


@pytest.fixture(scope='module')
def smoke_results(tmp_path_factory):
  """Three smoke runs through the runner: table1's G2G mixer, then the tiles study and one DST
  run together, two at a time."""
  tmp = tmp_path_factory.mktemp('reproduce')
  common = ['--dataset=smoke', '--seeds=1', f'--results_dir={tmp}/results', f'--work_root={tmp}/work']
  for args in (['table1', '--only=G2G mixer'], ['tiles', 'dst', '--only=tiles', '--only=mixed_hebbian', '--jobs=2']):
    r = script('run.py', *args, *common)
    assert r.returncode == 0, r.stderr[-2000:]
  return tmp, common


def test_runner_appends_one_line_per_run_and_reuses_shared_runs(smoke_results):
  tmp, common = smoke_results
  records = lines(f'{tmp}/results/smoke.jsonl')
  # tiles' scattered row is table1's G2G mixer: 3 runs, not 4. The last two ran at once.
  assert [(r['study'], r['name']) for r in records[:1]] == [('table1', 'G2G mixer')]
  assert sorted((r['study'], r['name']) for r in records[1:]) == [('dst', 'mixed_hebbian'), ('tiles', 'tiles')]
  mixer = records[0]
  tiles, dst = sorted(records[1:], key=lambda r: r['study'] == 'dst')
  assert {r['backend'] for r in records} == {'cpu'}  # read from each run's own log
  assert all(r['compile_seconds'] > 0 for r in records)
  assert any(name.startswith('jit_train_step') for name in os.listdir(f'{tmp}/work/jax_cache'))  # shared cache
  assert len(mixer['test_accuracy_curve']) == mixer['num_epochs'] == studies.SMOKE_EPOCHS
  assert mixer['final_test_accuracy'] == mixer['test_accuracy_curve'][-1]
  assert mixer['best_test_accuracy'] == max(mixer['test_accuracy_curve'])
  assert tiles['changes'] == {'connectivity.inter': 'tiles', 'num_epochs': studies.SMOKE_EPOCHS}  # smoke: 2
  assert 0 < tiles['sparsity'] < 1 and tiles['flops_per_example'] < mixer['flops_per_example'] * 1.5
  assert dst['mask_snapshot'] == f'masks/smoke_{dst["key"]}_seed0.npz'
  assert os.path.exists(f'{tmp}/results/{dst["mask_snapshot"]}')
  # A rerun finds everything done and trains nothing.
  again = script('run.py', 'tiles', *common)
  assert again.returncode == 0 and '0 run(s) to do' in again.stdout
  assert len(lines(f'{tmp}/results/smoke.jsonl')) == 3


def test_report_is_rebuilt_byte_for_byte_from_the_results(smoke_results, tmp_path):
  tmp, _ = smoke_results
  outs = [tmp_path / 'a', tmp_path / 'b']
  for out in outs:
    out.mkdir()
    r = script('report.py', f'--results_dir={tmp}/results', f'--out_dir={out}')
    assert r.returncode == 0, r.stderr[-2000:]
  names = sorted(os.listdir(outs[0]))
  assert names == [
    'README.md',
    'curves_smoke.png',
    'dst_smoke.png',
    'init_smoke.png',
    'mask_smoke.png',
    'p_sweep_smoke.png',
  ]
  for name in names:
    assert (outs[0] / name).read_bytes() == (outs[1] / name).read_bytes(), name
  readme = (outs[0] / 'README.md').read_text()
  record = lines(f'{tmp}/results/smoke.jsonl')[0]
  assert f'| G2G mixer | torch | 1 | {100 * record["final_test_accuracy"]:.2f} |' in readme
  assert f'| G2G mixer / torch | torch | 1 | {100 * record["final_test_accuracy"]:.2f} |' in readme  # a shared run
  assert '| FC v2 | | 0 | not run yet |' in readme
  assert '## CIFAR-100: not run' in readme
  check = script('report.py', f'--results_dir={tmp}/results', f'--out_dir={outs[0]}', '--check')
  assert check.returncode == 0, check.stdout
  (outs[0] / 'README.md').write_text(readme.replace('G2G mixer', 'G2G mixed'))
  check = script('report.py', f'--results_dir={tmp}/results', f'--out_dir={outs[0]}', '--check')
  assert check.returncode == 1 and 'differs' in check.stdout


def test_committed_readme_is_what_the_committed_results_give():
  r = script('report.py', '--check')
  assert r.returncode == 0, r.stdout + r.stderr[-2000:]


@pytest.mark.parametrize(
  'args, message',
  [
    (['table1', '--seeds=0'], '--seeds=0: must be at least 1'),
    (['table1', '--only=G2G', '--dataset=smoke'], "--only ['G2G']: not in study table1"),
    (['table1', '--set=connectivity.p_inter=0.5', '--dataset=smoke'], 'only runtime fields may be set'),
    (['table1', '--set=halt_after_steps=10', '--dataset=smoke'], 'it stops a run before its end'),
    (['table2'], "study ['table2']: expected one or more of table1"),
    (['table1', '--seeds=2', '--first_seed=2'], '--first_seed=2: must be at least 0 and below --seeds=2'),
    (['table1', '--jobs=0'], '--jobs=0: must be at least 1'),
    (['table1', '--shard=2/2'], '--shard=2/2: expected K/N with 0 <= K < N'),
  ],
)
def test_runner_rejects_bad_arguments_by_name(args, message, tmp_path):
  r = script('run.py', *args, f'--results_dir={tmp_path}')
  assert r.returncode == 2 and r.stderr.strip() == f'error: {r.stderr.strip()[7:]}' and message in r.stderr, r.stderr
  assert not os.listdir(tmp_path)


def test_a_results_line_needs_the_whole_run():
  import run  # noqa: PLC0415 (experiments/reproduce/run.py)

  evals = [{'kind': 'eval', 'step': 8 * e, 'epoch': e, 'test_accuracy': 0.5, 'best_test_accuracy': 0.5} for e in (1, 2)]
  with pytest.raises(run.RunnerError, match='the run ended at epoch 2 of 3: a results line needs the whole run'):
    run.summarize(evals, num_epochs=3)
  with pytest.raises(run.RunnerError, match='ended at before its first evaluation of 3'):
    run.summarize([{'kind': 'rewire', 'step': 4, 'seconds': 0.1}], num_epochs=3)


def test_a_broken_results_file_is_one_line_naming_it_and_a_half_written_last_line_is_skipped(tmp_path):
  (tmp_path / 'smoke.jsonl').write_text('{"key": "a", "seed": 0}\nnot json\n{"key": "b", "seed": 0}\n')
  for name in ('run.py', 'report.py'):
    extra = ['table1', '--dataset=smoke', '--seeds=1'] if name == 'run.py' else [f'--out_dir={tmp_path}', '--check']
    r = script(name, *extra, f'--results_dir={tmp_path}')
    assert (
      r.returncode == 3
      and r.stderr.strip()
      == f'error: {tmp_path}/smoke.jsonl: line 2 is not a results record '
      '(Expecting value: line 1 column 1 (char 0)); fix or remove that line'
    ), r.stderr
  import run  # noqa: PLC0415 (experiments/reproduce/run.py)

  (tmp_path / 'smoke.jsonl').write_text('{"key": "a", "seed": 0}\n{"key": "b", "se')
  assert run.read_results(str(tmp_path / 'smoke.jsonl')) == [{'key': 'a', 'seed': 0}]


def test_a_failed_run_and_a_timeout_are_one_line_each_and_a_timed_out_run_resumes(tmp_path):
  common = ['table1', '--dataset=smoke', '--seeds=1', '--only=FC v2', f'--results_dir={tmp_path}/r']
  common += [f'--work_root={tmp_path}/w', f'--jax_cache={os.environ["JAX_COMPILATION_CACHE_DIR"]}']
  failed = script('run.py', *common, '--set=data.dir=/nonexistent', '--set=data.source=local')
  (line,) = [x for x in failed.stderr.splitlines() if x.startswith('error: ')]
  assert failed.returncode == 1 and 'Traceback' not in failed.stderr
  assert (
    line.startswith("error: table1/FC v2 seed 0 failed (exit 2): config.data.source = 'local': must be")
    and 'failed.log' in line
  )
  timed_out = script('run.py', *common, '--timeout=0.5')  # a SIGTERM while it loads or trains: it stops cleanly
  assert timed_out.returncode == 1 and timed_out.stderr.strip() == (
    'error: table1/FC v2 seed 0 ran out of its 0.5 s (--timeout) and stopped: rerun to resume it'
  ), timed_out.stderr
  assert not os.path.exists(f'{tmp_path}/r/smoke.jsonl')
  again = script('run.py', *common)
  assert again.returncode == 0, again.stderr[-2000:]
  assert [r['name'] for r in lines(f'{tmp_path}/r/smoke.jsonl')] == ['FC v2']


def child_ready(workdir_part: str) -> bool:
  """Whether a training process of this workdir runs and has its signal handlers in place."""
  pids = subprocess.run(['pgrep', '-f', f'g2g_jax.main.*{workdir_part}'], capture_output=True, text=True).stdout.split()
  for pid in pids:
    try:
      with open(f'/proc/{pid}/status') as f:
        caught = int(next(line for line in f if line.startswith('SigCgt:')).split()[1], 16)
    except (OSError, StopIteration):
      continue
    if caught & (1 << (signal.SIGTERM - 1)):
      return True
  return False


def test_a_signal_to_the_runner_stops_its_run_and_leaves_no_orphan(tmp_path):
  common = ['table1', '--dataset=smoke', '--seeds=1', '--only=FC v2', f'--results_dir={tmp_path}/r']
  common += [f'--work_root={tmp_path}/w', f'--jax_cache={os.environ["JAX_COMPILATION_CACHE_DIR"]}']
  proc = subprocess.Popen(
    [sys.executable, os.path.join(REPRO, 'run.py'), *common],
    cwd=ROOT,
    stdout=subprocess.PIPE,
    stderr=subprocess.PIPE,
    text=True,
  )
  try:
    deadline = time.time() + 120
    while not child_ready(f'{tmp_path}/w'):
      assert time.time() < deadline and proc.poll() is None
      time.sleep(0.01)
    proc.send_signal(signal.SIGTERM)  # passed on: the run ends at once, or at a step boundary after a checkpoint
    _, err = proc.communicate(timeout=120)
  finally:
    proc.kill()
  assert proc.returncode == 75 and err.startswith('error: table1/FC v2 seed 0 stopped ('), err
  assert 'SIGTERM' in err and 'Traceback' not in err and len(err.strip().splitlines()) == 1, err
  assert not os.path.exists(f'{tmp_path}/r/smoke.jsonl')
  assert not child_ready(f'{tmp_path}/w')  # no orphan holds the workdir
