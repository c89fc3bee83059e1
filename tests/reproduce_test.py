"""The reproduction runner and report (experiments/reproduce), on the smoke config."""

import json
import os
import subprocess
import sys

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
    (['table2'], "study ['table2']: expected one or more of table1"),
    (['table1', '--seeds=2', '--first_seed=2'], '--first_seed=2: must be at least 0 and below --seeds=2'),
    (['table1', '--jobs=0'], '--jobs=0: must be at least 1'),
    (['table1', '--shard=2/2'], '--shard=2/2: expected K/N with 0 <= K < N'),
  ],
)
def test_runner_rejects_bad_arguments_by_name(args, message, tmp_path):
  r = script('run.py', *args, f'--results_dir={tmp_path}')
  assert r.returncode == 2 and message in r.stderr, r.stderr
  assert not os.listdir(tmp_path)


def test_commit_is_named_by_g2g_commit_when_set(monkeypatch):
  import run  # noqa: PLC0415 (experiments/reproduce/run.py)

  monkeypatch.delenv('G2G_COMMIT', raising=False)
  here = run._commit()
  assert here and here != 'unknown'  # this checkout's own commit
  monkeypatch.setenv('G2G_COMMIT', 'abc1234')
  assert run._commit() == 'abc1234'


def test_report_keeps_cpu_and_gpu_timings_apart():
  import report  # noqa: PLC0415 (experiments/reproduce/report.py)

  def rec(backend, wall):
    return {'backend': backend, 'wall_seconds': wall}

  cpu_only = [rec('cpu', 100.0), rec('cpu', 120.0)]
  assert report._timing(cpu_only, report._wall_cell) == '110'
  mixed = [rec('gpu', 10.0), rec('cpu', 100.0), rec('gpu', 30.0)]
  assert report._timing(mixed, report._wall_cell) == '100 (1); GPU 20 (2)'


def test_budget_points_match_their_head_parameter_budget():
  from g2g_jax import connectivity as conn  # noqa: PLC0415

  for width, budget in studies.SCATTERED_POINTS + studies.TILED_POINTS:
    groups, p_inter = studies.budget_connectivity(width, studies.BUDGETS[budget])
    assert 1024 % groups == 0 and 512 % groups == 0
    density = conn.expected_density(groups, 1.0, p_inter)
    assert conn.mlp_param_count(512, [width] * 3, 10, density) == pytest.approx(studies.BUDGETS[budget], rel=1e-2)
    assert 1 / groups <= density <= 3 / groups  # intra edges about half of a layer's
  assert studies.budget_connectivity(1024, 0.69e6) == (8, 0.1522)  # the paper's G = 8, p' = 0.15, nearly
  for w in studies.DENSE_WIDTHS[:2]:
    assert conn.param_matched_width(512, 3, 10, conn.mlp_param_count(512, [w] * 3, 10)) == w
  names = {e.name for e in studies.STUDIES['budget']}
  assert len(names) == len(studies.STUDIES['budget'])
  by_name = {(s, e.name): e for s, entries in studies.STUDIES.items() for e in entries}
  key = lambda s, n: studies.run_key('cifar10', by_name[(s, n)])[0]  # noqa: E731
  assert key('budget', 'dense w=1024 (FC v2)') == key('init', 'FC v2 / he_normal')  # shared runs
  assert key('budget', 'G2G w=1024 0.69M') == key('init', 'G2G mixer / he_normal')


def test_two_shards_at_once_run_every_run_exactly_once(tmp_path):
  only = ['--only=FC v1', '--only=ER', '--only=G2G mixer']  # three of table1's five runs: 2 + 1
  common = ['table1', '--dataset=smoke', '--seeds=1', *only, f'--results_dir={tmp_path}/results']
  common += [f'--work_root={tmp_path}/w', f'--jax_cache={os.environ["JAX_COMPILATION_CACHE_DIR"]}']
  procs = [
    subprocess.Popen(
      [sys.executable, os.path.join(REPRO, 'run.py'), *common, f'--shard={k}/2'],
      cwd=ROOT,
      stdout=subprocess.PIPE,
      stderr=subprocess.PIPE,
      text=True,
    )
    for k in (0, 1)
  ]
  outs = [p.communicate(timeout=600) for p in procs]
  assert [p.returncode for p in procs] == [0, 0], [err[-2000:] for _, err in outs]
  assert '(shard 0 of 2): 2 run(s) to do' in outs[0][0] and '(shard 1 of 2): 1 run(s) to do' in outs[1][0]
  records = lines(f'{tmp_path}/results/smoke.jsonl')
  keys = [(r['key'], r['seed']) for r in records]
  assert len(keys) == len(set(keys)) == len(only)
  assert sorted(r['name'] for r in records) == ['ER', 'FC v1', 'G2G mixer']
  again = script('run.py', *common, '--shard=1/2')
  assert again.returncode == 0 and '0 run(s) to do' in again.stdout
  r = script('report.py', f'--results_dir={tmp_path}/results', f'--out_dir={tmp_path}')
  assert r.returncode == 0 and '| G2G mixer | torch | 1 |' in (tmp_path / 'README.md').read_text()
