"""The command line, end to end, as a user runs it (subprocesses, 4 CPU devices)."""

import json
import os

import conftest
from conftest import ROOT, one_error_line, run_cli_cases

MOCK_RUNNER = """
import dataclasses
import sys
import tensorflow_datasets as tfds
from absl import app
from g2g_jax import data, main
# mock_data makes 64 examples a split: the size the run must then expect; it stands in for
# a tfds that can download, so the network probe must answer.
data.DATASETS['cifar100'] = dataclasses.replace(data.DATASETS['cifar100'], num_train=64, num_test=64)
data._network_answers = lambda *args, **kwargs: True
with tfds.testing.mock_data(num_examples=64):
  app.run(main.main, argv=sys.argv, flags_parser=main.parse_flags)
"""


def run_cli(*args, cwd=ROOT, mock_tfds=False):
  return conftest.run_cli(*args, cwd=cwd, prefix=['-c', MOCK_RUNNER] if mock_tfds else None)


def read_metrics(workdir):
  with open(os.path.join(workdir, 'metrics.jsonl')) as f:
    return [json.loads(line) for line in f]


def test_smoke_config_end_to_end_with_overrides(tmp_path):
  workdir = tmp_path / 'run'
  r = run_cli(
    f'--config={ROOT}/configs/smoke.py:g2g_index',
    f'--workdir={workdir}',
    '--config.connectivity.p_inter=0.5',
    '--config.progress=lines',
    f'--jax_compilation_cache_dir={tmp_path / "jax_cache"}',  # JAX's own options are flags too
    '--jax_persistent_cache_min_compile_time_secs=0',
    cwd=tmp_path,  # config files must load from any folder
  )
  assert r.returncode == 0, r.stderr[-3000:]
  rows = read_metrics(workdir)
  assert [row['epoch'] for row in rows] == [1, 2]
  assert any(name.startswith('jit_train_step') for name in os.listdir(tmp_path / 'jax_cache'))
  saved = json.loads((workdir / 'config.json').read_text())
  assert saved['connectivity']['grouping'] == 'index' and saved['connectivity']['p_inter'] == 0.5
  assert 'epoch 1 8/8 loss' in r.stderr  # the progress display
  assert 'FLOPs per example' in r.stderr and 'active params: head' in r.stderr
  assert os.listdir(workdir / 'checkpoints')
  again = run_cli('--config=configs/smoke.py:g2g_index', f'--workdir={workdir}', '--config.connectivity.p_inter=0.5')
  assert again.returncode == 0 and 'run already finished' in again.stderr
  assert read_metrics(workdir) == rows


def test_the_mixer_config_from_the_command_line(tmp_path):
  r = run_cli(
    '--config=configs/cifar10_mixer.py',
    f'--workdir={tmp_path}',
    '--config.data.source=synthetic',  # random CIFAR-shaped data: CI has no CIFAR
    '--config.data.synthetic_num_train=128',
    '--config.data.synthetic_num_test=64',
    '--config.num_epochs=1',
    '--config.batch_size=32',
    '--config.num_microbatches=2',  # the file's 16 needs a batch of 64 on the suite's 4 devices
    '--config.eval_batch_size=32',
    '--config.model.mixer_channels=16',
    '--config.connectivity.inter=tiles',
  )
  assert r.returncode == 0, r.stderr[-3000:]
  assert 'mixer of 64 tokens x 16 channels' in r.stderr and 'block_1/token_mlp/Dense_0: density 0.2500' in r.stderr
  (row,) = read_metrics(tmp_path)
  assert row['step'] == 4 and 0.7 < row['sparsity'] < 0.8


def test_cifar100_config_under_tfds_mock_data(tmp_path):
  r = run_cli(
    '--config=configs/cifar100.py',
    f'--workdir={tmp_path}',
    '--config.data.source=tfds',
    '--config.num_epochs=1',
    '--config.batch_size=32',
    '--config.eval_batch_size=32',
    '--config.model.patch_channels=4',
    '--config.model.hidden_width=32',
    '--config.connectivity.num_groups=4',
    mock_tfds=True,
  )
  assert r.returncode == 0, r.stderr[-3000:]
  assert 'data: cifar100 from tfds' in r.stderr and 'augment=crop_flip' in r.stderr
  (row,) = read_metrics(tmp_path)
  assert row['step'] == 2 and 0.0 <= row['test_accuracy'] <= 1.0


BAD_INPUT = [
  (['--config.connectivity.p_inter=1.5'], 2, 'config.connectivity.p_inter = 1.5: must be in [0.0, 1.0]'),
  (['--config.connectivity.p_intra=-1.0'], 2, 'config.connectivity.p_intra = -1.0: must be >= 0.0'),
  (
    ['--config.model.hidden_width=30'],
    2,
    'config.model.hidden_width = 30: must be divisible by connectivity.num_groups',
  ),
  (['--config.data.name=mnist'], 2, "config.data.name = 'mnist': must be one of 'fashion_mnist'"),
  (['--config.connectivity.grouping=spiral'], 2, "config.connectivity.grouping = 'spiral': must be one of"),
  (['--config.batch_size=30'], 2, 'config.batch_size = 30: must be divisible by the number of devices (4)'),
  (['--config.model.depth=3'], 2, "--config.model.depth: unknown config field 'depth'"),
  (['--config.batch_size=abc'], 2, '--config.batch_size=abc: invalid literal for int()'),
  (
    ['--config.data.name=cifar100', '--config.data.source=local', '--config.data.dir=/nonexistent'],
    3,
    "dataset 'cifar100' not found. Looked in: /nonexistent/cifar-100-python",
  ),
]


def test_bad_input_exits_with_one_line_and_its_status_and_writes_nothing(tmp_path):
  cases = [
    ['--config=configs/smoke.py', f'--workdir={tmp_path}/{i}', *args] for i, (args, _, _) in enumerate(BAD_INPUT)
  ]
  for i, ((_, status, message), result) in enumerate(zip(BAD_INPUT, run_cli_cases(cases), strict=True)):
    assert result['code'] == status, result['output'][-2000:]
    assert message in one_error_line(result['output'])
    assert not (tmp_path / str(i)).exists()


def test_non_finite_loss_exits_naming_the_step(tmp_path):
  r = run_cli('--config=configs/smoke.py', f'--workdir={tmp_path}', '--config.optim.learning_rate=1e30')
  assert r.returncode == 4
  line = one_error_line(r.stderr)
  assert 'non-finite training loss' in line and 'at step ' in line
  assert not os.path.exists(tmp_path / 'metrics.jsonl')
