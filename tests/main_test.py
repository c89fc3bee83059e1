"""The command line, end to end, as a user runs it (subprocesses, 4 CPU devices)."""

import json
import os
import subprocess
import sys

import pytest

from conftest import ROOT

MOCK_RUNNER = """
import dataclasses
import sys
import tensorflow_datasets as tfds
from absl import app
from g2g_jax import data, main
# mock_data makes 64 examples a split: the size the run must then expect.
data.DATASETS['cifar100'] = dataclasses.replace(data.DATASETS['cifar100'], num_train=64, num_test=64)
with tfds.testing.mock_data(num_examples=64):
  app.run(main.main, argv=sys.argv, flags_parser=main.parse_flags)
"""


def run_cli(*args, cwd=ROOT, mock_tfds=False):
  cmd = [sys.executable, '-c', MOCK_RUNNER] if mock_tfds else [sys.executable, '-m', 'g2g_jax.main']
  return subprocess.run([*cmd, *args], cwd=cwd, capture_output=True, text=True, timeout=300)


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
  (['--config.connectivity.p_inter=1.5'], 'config.connectivity.p_inter = 1.5: must be in [0.0, 1.0]'),
  (['--config.connectivity.p_intra=-1.0'], 'config.connectivity.p_intra = -1.0: must be >= 0.0'),
  (['--config.model.hidden_width=30'], 'config.model.hidden_width = 30: must be divisible by connectivity.num_groups'),
  (['--config.data.name=mnist'], "config.data.name = 'mnist': must be one of 'fashion_mnist'"),
  (['--config.connectivity.grouping=spiral'], "config.connectivity.grouping = 'spiral': must be one of"),
  (['--config.batch_size=30'], 'config.batch_size = 30: must be divisible by the number of devices (4)'),
  (['--config.model.depth=3'], "--config.model.depth: unknown config field 'depth'"),
  (['--config.batch_size=abc'], '--config.batch_size=abc: invalid literal for int()'),
  (
    ['--config.data.name=cifar100', '--config.data.source=local', '--config.data.dir=/nonexistent'],
    "dataset 'cifar100' not found. Looked in: /nonexistent/cifar-100-python",
  ),
]


@pytest.mark.parametrize('args,message', BAD_INPUT, ids=[a[0][0] for a in BAD_INPUT])
def test_bad_input_exits_nonzero_with_message_and_writes_nothing(tmp_path, args, message):
  workdir = tmp_path / 'run'
  r = run_cli('--config=configs/smoke.py', f'--workdir={workdir}', *args)
  assert r.returncode != 0
  assert message in r.stderr, r.stderr[-2000:]
  assert not workdir.exists()


def test_non_finite_loss_exits_naming_the_step(tmp_path):
  r = run_cli('--config=configs/smoke.py', f'--workdir={tmp_path}', '--config.optim.learning_rate=1e30')
  assert r.returncode != 0
  assert 'non-finite training loss' in r.stderr and 'at step ' in r.stderr
  assert not os.path.exists(tmp_path / 'metrics.jsonl')
