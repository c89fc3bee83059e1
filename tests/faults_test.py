"""Faults a careful user meets, each injected and its outcome checked: one line naming the
thing, a fixed exit status, nothing mixed or lost, and a resume that equals an uninterrupted
run wherever a run can go on."""

import dataclasses
import errno
import glob
import gzip
import json
import os
import shutil
import signal
import struct
import subprocess
import sys
import time
import types

import chex
import numpy as np
import orbax.checkpoint as ocp
import pytest

from conftest import ROOT, final_state, load_config, one_error_line, records, run_cli, run_cli_cases
from g2g_jax import data, input_pipeline, interrupts, train
from g2g_jax import workdir as workdir_lib
from g2g_jax.config import ConfigError

TIMING = ('examples_per_sec', 'epoch_seconds', 'compile_seconds')


def strip(rows):
  return [{k: v for k, v in r.items() if k not in TIMING} for r in rows]


def smoke():
  config = load_config('smoke')
  config.progress = 'none'
  return config


@pytest.fixture(scope='module')
def straight(tmp_path_factory):
  """An uninterrupted smoke run: (final state, records)."""
  workdir = str(tmp_path_factory.mktemp('straight'))
  train.train_and_evaluate(smoke(), workdir)
  return final_state(smoke(), workdir), strip(records(workdir))


def halted(workdir, step=12):
  """A smoke run stopped at `step` (12: checkpoints at 8, the epoch's end, and 12)."""
  config = smoke()
  config.halt_after_steps = step
  assert train.train_and_evaluate(config, str(workdir)) == {'step': step, 'halted': True}


def assert_resumes_exactly(workdir, straight):
  train.train_and_evaluate(smoke(), str(workdir))
  chex.assert_trees_all_equal(final_state(smoke(), str(workdir)).params, straight[0].params)
  chex.assert_trees_all_equal(final_state(smoke(), str(workdir)).opt_state, straight[0].opt_state)
  assert strip(records(str(workdir))) == straight[1]


# 1. Two runs in one workdir.


def test_a_workdir_in_use_is_refused_and_a_killed_holder_leaves_no_lock(tmp_path, straight):
  holder = subprocess.Popen(
    [sys.executable, '-c', f'from g2g_jax import workdir; lock = workdir.Lock({str(tmp_path)!r}).__enter__(); input()'],
    cwd=ROOT,
    stdin=subprocess.PIPE,
  )
  try:
    deadline = time.time() + 60
    while not os.path.exists(tmp_path / '.lock') or not (tmp_path / '.lock').read_text():
      assert time.time() < deadline
      time.sleep(0.1)
    r = run_cli('--config=configs/smoke.py', f'--workdir={tmp_path}')
    assert r.returncode == 3
    assert f'workdir {tmp_path} is in use by another run (pid {holder.pid} on' in one_error_line(r.stderr)
    assert sorted(os.listdir(tmp_path)) == ['.lock']  # nothing of the second run written
  finally:
    holder.kill()  # as kill -9: the kernel drops its lock
    holder.wait()
  assert_resumes_exactly(tmp_path, straight)


def test_a_locked_workdir_is_refused_before_anything_is_written(tmp_path):
  with workdir_lib.Lock(str(tmp_path)), pytest.raises(workdir_lib.WorkdirError, match='is in use by another run'):
    train.train_and_evaluate(smoke(), str(tmp_path))
  assert not os.path.exists(tmp_path / 'metrics.jsonl') and not os.path.exists(tmp_path / 'config.json')


# 2. A corrupt latest checkpoint.


def test_a_corrupt_latest_checkpoint_is_skipped_for_the_one_before(tmp_path, straight, caplog):
  halted(tmp_path)
  for f in glob.glob(str(tmp_path / 'checkpoints' / '12' / 'state' / 'ocdbt.process_0' / 'd' / '*')):
    os.truncate(f, 10)
  with caplog.at_level('WARNING'):
    assert_resumes_exactly(tmp_path, straight)
  assert any('skipped the checkpoint at step 12' in r.getMessage() for r in caplog.records)
  assert os.path.isdir(tmp_path / 'unreadable_checkpoints' / '12')  # moved aside, not deleted


def test_no_readable_checkpoint_is_one_error_and_moves_nothing(tmp_path):
  halted(tmp_path, step=4)
  for f in glob.glob(str(tmp_path / 'checkpoints' / '*' / 'state' / 'ocdbt.process_0' / 'd' / '*')):
    os.truncate(f, 10)
  with pytest.raises(workdir_lib.WorkdirError, match='no checkpoint in .* can be read .*step 4'):
    train.train_and_evaluate(smoke(), str(tmp_path))
  assert os.listdir(tmp_path / 'checkpoints') == ['4'] and not os.path.exists(tmp_path / 'unreadable_checkpoints')


# 3. A half-written last line of metrics.jsonl.


def test_a_half_written_last_metrics_line_is_dropped(tmp_path, straight):
  halted(tmp_path)
  with open(tmp_path / 'metrics.jsonl', 'a') as f:
    f.write('{"kind": "eval", "step": 16, "test_acc')  # a crash during an append
  assert_resumes_exactly(tmp_path, straight)


def test_a_broken_line_inside_metrics_is_one_error_naming_it(tmp_path):
  halted(tmp_path)
  (tmp_path / 'metrics.jsonl').write_text('{"step": 8}\nnot json\n{"step": 12}\n')
  with pytest.raises(workdir_lib.WorkdirError, match=r'metrics.jsonl: line 2 is not a record'):
    train.train_and_evaluate(smoke(), str(tmp_path))


# 4. config.json deleted, emptied or truncated.


def test_the_checkpoint_keeps_the_workdirs_config(tmp_path, straight):
  halted(tmp_path)
  os.remove(tmp_path / 'config.json')
  other = smoke()
  other.optim.learning_rate = 0.002
  with pytest.raises(ConfigError, match='optim.learning_rate: 0.01 -> 0.002'):
    train.train_and_evaluate(other, str(tmp_path))
  (tmp_path / 'config.json').write_text('{"seed": 0, "opt')  # truncated
  assert_resumes_exactly(tmp_path, straight)
  first = smoke()
  first.halt_after_steps = 12  # the run's config is the one it started with
  assert json.loads((tmp_path / 'config.json').read_text()) == json.loads(first.to_json())  # rewritten whole


def test_a_broken_config_json_without_checkpoints_is_one_error(tmp_path):
  (tmp_path / 'config.json').write_text('')
  with pytest.raises(workdir_lib.WorkdirError, match='config.json is unreadable'):
    train.train_and_evaluate(smoke(), str(tmp_path))


# 5. Bad dataset files.


def write_idx(path, array, gz):
  header = struct.pack('>HBB', 0, 0x08, array.ndim) + struct.pack(f'>{array.ndim}I', *array.shape)
  with (gzip.open if gz else open)(path + ('.gz' if gz else ''), 'wb') as f:
    f.write(header + array.astype(np.uint8).tobytes())


def fashion_files(directory, n_train=6, n_labels=6, label=3):
  rng = np.random.default_rng(0)  # the same pixels at every call
  write_idx(f'{directory}/train-images-idx3-ubyte', rng.integers(0, 256, (n_train, 28, 28)), gz=True)
  write_idx(f'{directory}/train-labels-idx1-ubyte', np.full(n_labels, label), gz=False)
  write_idx(f'{directory}/t10k-images-idx3-ubyte', rng.integers(0, 256, (4, 28, 28)), gz=False)
  write_idx(f'{directory}/t10k-labels-idx1-ubyte', np.full(4, 1), gz=False)


def corrupt(directory, how):
  if how == 'truncated idx':
    os.truncate(f'{directory}/t10k-images-idx3-ubyte', 100)
  elif how == 'wrong magic':
    with open(f'{directory}/t10k-images-idx3-ubyte', 'r+b') as f:
      f.write(b'\x12\x34')
  elif how == 'truncated gz':
    os.truncate(f'{directory}/train-images-idx3-ubyte.gz', 60)
  elif how == 'empty labels':
    os.truncate(f'{directory}/train-labels-idx1-ubyte', 0)


@pytest.mark.parametrize(
  'how,message',
  [
    ('truncated idx', 't10k-images-idx3-ubyte: its header says (4, 28, 28), the file holds 84 bytes'),
    ('wrong magic', 't10k-images-idx3-ubyte: not an unsigned-byte IDX file'),
    ('truncated gz', 'train-images-idx3-ubyte.gz: unreadable'),
    ('empty labels', 'train-labels-idx1-ubyte: 0 bytes, too short for an IDX file'),
  ],
)
def test_broken_idx_files_are_one_error_naming_the_file(tmp_path, how, message):
  fashion_files(tmp_path)
  corrupt(tmp_path, how)
  with pytest.raises(data.DataError, match=message.replace('(', r'\(').replace(')', r'\)')):
    data.load_dataset(data.DataSpec('fashion_mnist', source='local', dir=str(tmp_path)))


def test_a_truncated_cifar_batch_is_one_error(tmp_path):
  d = tmp_path / 'cifar-10-batches-bin'
  d.mkdir()
  for name in [f'data_batch_{k}.bin' for k in range(1, 6)] + ['test_batch.bin']:
    (d / name).write_bytes(bytes(3073 * 2))
  os.truncate(d / 'data_batch_3.bin', 3073 + 100)
  with pytest.raises(data.DataError, match='not whole records of 3073'):
    data.load_dataset(data.DataSpec('cifar10', source='local', dir=str(tmp_path)))


def test_disagreeing_counts_and_foreign_labels_are_refused_before_the_workdir_is_written(tmp_path):
  info = data.DatasetInfo((28, 28, 1), 10, 6, 4, 'none')
  (tmp_path / 'counts').mkdir()
  fashion_files(tmp_path / 'counts', n_labels=5)
  ds = data.load_dataset(data.DataSpec('fashion_mnist', source='local', dir=str(tmp_path / 'counts')))
  with pytest.raises(data.DataError, match='the train split has 6 images and 5 labels'):
    data.check_sizes(ds, info)
  (tmp_path / 'labels').mkdir()
  fashion_files(tmp_path / 'labels', label=12)
  ds = data.load_dataset(data.DataSpec('fashion_mnist', source='local', dir=str(tmp_path / 'labels')))
  with pytest.raises(data.DataError, match=r'6 train labels outside 0..9 \(the first: 12\)'):
    data.check_sizes(ds, info)
  # Through the command line: the one-line error and status 3, and no workdir.
  (tmp_path / 'bad').mkdir()
  fashion_files(tmp_path / 'bad')
  corrupt(tmp_path / 'bad', 'truncated gz')
  flags = ['--config=configs/fashion_mnist.py', '--config.data.source=local', f'--config.data.dir={tmp_path / "bad"}']
  (result,) = run_cli_cases([[*flags, f'--workdir={tmp_path / "run"}']])
  assert result['code'] == 3 and 'train-images-idx3-ubyte.gz: unreadable' in one_error_line(result['output'])
  assert not (tmp_path / 'run').exists()


# 6. tfds without a network.


def test_tfds_without_network_fails_at_once_without_downloading(monkeypatch):
  monkeypatch.setattr(data, '_tfds_prepared', lambda *a: False)
  monkeypatch.setattr(data, '_network_answers', lambda *a, **k: False)

  def no_download(*args, **kwargs):
    raise AssertionError('tfds asked to download without a network')

  monkeypatch.setattr(data, 'load_tfds', no_download)
  t0 = time.perf_counter()
  with pytest.raises(data.DataNotFoundError, match=r"dataset 'cifar10' not found.*tfds download \(no network\)"):
    data.load_dataset(data.DataSpec('cifar10', source='tfds'))
  assert time.perf_counter() - t0 < 5


# 7. SIGTERM and Ctrl-C.


def signal_at(monkeypatch, signum, step):
  """Sends signum to this process while the loop fetches the batch of step `step` + 1."""
  original = input_pipeline.TrainBatches.indices

  def indices(self, s):
    if s == step:
      os.kill(os.getpid(), signum)
    return original(self, s)

  monkeypatch.setattr(input_pipeline.TrainBatches, 'indices', indices)


@pytest.mark.parametrize('signum', [signal.SIGTERM, signal.SIGINT])
def test_a_signal_saves_at_the_next_step_boundary_and_the_rerun_resumes_exactly(
  tmp_path, straight, monkeypatch, signum
):
  before = signal.getsignal(signum)  # SIG_IGN for SIGINT in a pytest-xdist worker or a background job
  signal_at(monkeypatch, signum, 5)  # mid-epoch: 8 steps an epoch
  with pytest.raises(interrupts.Stopped, match=f'stopped by {signal.Signals(signum).name} at step 6'):
    train.train_and_evaluate(smoke(), str(tmp_path))
  assert sorted(os.listdir(tmp_path / 'checkpoints')) == ['6']
  assert signal.getsignal(signum) == before  # handlers restored
  monkeypatch.undo()
  assert_resumes_exactly(tmp_path, straight)


def test_a_signal_during_a_background_save_keeps_that_checkpoint_too(tmp_path, straight, monkeypatch):
  signal_at(monkeypatch, signal.SIGTERM, 8)  # the epoch's checkpoint at step 8 is being written meanwhile
  with pytest.raises(interrupts.Stopped, match='at step 9'):
    train.train_and_evaluate(smoke(), str(tmp_path))
  assert sorted(os.listdir(tmp_path / 'checkpoints')) == ['8', '9']
  monkeypatch.undo()
  assert_resumes_exactly(tmp_path, straight)


def start_training(workdir) -> subprocess.Popen:
  """A long smoke run on the command line, returned once it has saved its first checkpoint."""
  args = ['--config=configs/smoke.py', f'--workdir={workdir}', '--config.num_epochs=500', '--config.progress=none']
  proc = subprocess.Popen([sys.executable, '-m', 'g2g_jax.main', *args], cwd=ROOT, stderr=subprocess.PIPE, text=True)
  deadline = time.time() + 120
  while not glob.glob(str(workdir / 'checkpoints' / '[0-9]*')):  # training has begun
    if time.time() > deadline or proc.poll() is not None:
      proc.kill()
      raise AssertionError(f'no checkpoint within 120 s: {proc.communicate()[1][-2000:]}')
    time.sleep(0.2)
  return proc


def test_sigterm_from_outside_exits_75_with_one_line(tmp_path):
  proc = start_training(tmp_path)
  try:
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
  finally:
    proc.kill()
  assert proc.returncode == 75
  line = one_error_line(err)
  assert 'stopped by SIGTERM at step' in line and 'a checkpoint was saved: rerun the command to resume' in line
  step = int(line.split('at step ')[1].split(';')[0])
  assert str(step) in os.listdir(tmp_path / 'checkpoints')


# 8. Config-file and workdir errors, before anything is loaded or compiled.


def test_config_file_and_workdir_errors_are_one_line_each(tmp_path):
  configs = tmp_path / 'configs'  # importing a config file may write configs/__pycache__
  configs.mkdir()
  (configs / 'syntax.py').write_text('def get_config(:\n')
  (configs / 'returns_int.py').write_text('def get_config():\n  return 3\n')
  (tmp_path / 'a_file').write_text('')
  smoke_config = f'--config={ROOT}/configs/smoke.py'
  cases = [
    ([f'--config={configs}/missing.py', f'--workdir={tmp_path}/w1'], 2, 'missing.py: no such file'),
    ([f'--config={configs}/syntax.py', f'--workdir={tmp_path}/w2'], 2, 'SyntaxError'),
    ([f'--config={configs}/returns_int.py', f'--workdir={tmp_path}/w3'], 2, 'get_config() returned int'),
    ([f'{smoke_config}:nope', f'--workdir={tmp_path}/w4'], 2, "config row 'nope': expected one of"),
    ([smoke_config, f'--workdir={tmp_path}/a_file'], 3, 'is a file, not a folder'),
    ([smoke_config, '--workdir='], 3, '--workdir is empty'),
    ([smoke_config, '--workdir=/proc/g2g_jax_test'], 3, 'cannot be created in /proc'),
  ]
  for (args, status, message), result in zip(cases, run_cli_cases([c[0] for c in cases]), strict=True):
    assert result['code'] == status, (args, result['output'][-2000:])
    assert message in one_error_line(result['output']), args
    assert 'JAX ' not in result['output'], args  # refused before JAX started
  assert sorted(os.listdir(tmp_path)) == ['a_file', 'configs']  # no workdir was made


# 9. A full disk.


def test_a_full_disk_is_one_error_and_the_previous_checkpoint_resumes(tmp_path, straight, monkeypatch):
  original = ocp.CheckpointManager.save

  def save(self, step, *args, **kwargs):
    if step == 16:
      raise OSError(errno.ENOSPC, 'No space left on device')
    return original(self, step, *args, **kwargs)

  monkeypatch.setattr(ocp.CheckpointManager, 'save', save)
  with pytest.raises(workdir_lib.WorkdirError, match='no space left on device .* the checkpoint at step 8 is intact'):
    train.train_and_evaluate(smoke(), str(tmp_path))
  monkeypatch.undo()
  assert_resumes_exactly(tmp_path, straight)


# 10. A non-finite test loss.


def test_a_non_finite_test_loss_stops_the_run(tmp_path, monkeypatch):
  original = train.eval_step
  monkeypatch.setattr(train, 'eval_step', lambda state, batch: {**original(state, batch), 'loss': np.inf})
  with pytest.raises(FloatingPointError, match='non-finite test loss \\(inf\\) at step 8; stopped'):
    train.train_and_evaluate(smoke(), str(tmp_path))
  assert not (tmp_path / 'metrics.jsonl').exists()  # nothing recorded from the bad evaluation
  assert sorted(os.listdir(tmp_path / 'checkpoints')) == []


# 11. Resume bookkeeping: TensorBoard and a lost metrics file.


def scalar_steps(logdir, tag):
  """The steps TensorBoard shows for a tag: events in file order, a SessionLog START at step s
  hiding the points before it at steps >= s (TensorBoard's purge of orphaned data)."""
  from tensorboardX.proto import event_pb2  # noqa: PLC0415

  steps = []
  for path in sorted(glob.glob(f'{logdir}/events.out.tfevents.*')):
    raw = open(path, 'rb').read()
    i = 0
    while i < len(raw):
      (n,) = struct.unpack('<Q', raw[i : i + 8])
      event = event_pb2.Event.FromString(raw[i + 12 : i + 12 + n])
      i += 12 + n + 4
      if event.HasField('session_log') and event.session_log.status == event.session_log.START:
        steps = [s for s in steps if s < event.step]
      steps += [event.step for v in event.summary.value if v.tag == tag]
  return steps


def test_resume_drops_tensorboard_points_after_the_checkpoint(tmp_path, monkeypatch):
  from tensorboardX import SummaryWriter, event_file_writer  # noqa: PLC0415

  # every event file opened in the same second, the case where a file named by the second is overwritten
  monkeypatch.setattr(event_file_writer, 'time', types.SimpleNamespace(time=lambda: 1.7e9))
  halted(tmp_path)

  # a run killed after an evaluation at 16, before its checkpoint
  stray = SummaryWriter(str(tmp_path / 'tensorboard'), filename_suffix=f'.{time.time_ns()}')
  stray.add_scalar('test_accuracy', 0.99, 16)
  stray.close()
  train.train_and_evaluate(smoke(), str(tmp_path))
  assert scalar_steps(str(tmp_path / 'tensorboard'), 'test_accuracy') == [8, 16]


@pytest.mark.parametrize('loss', ['deleted', 'emptied'])
def test_a_lost_metrics_file_comes_back_from_the_checkpoint(tmp_path, straight, loss):
  halted(tmp_path)
  if loss == 'deleted':
    os.remove(tmp_path / 'metrics.jsonl')
  else:
    (tmp_path / 'metrics.jsonl').write_text('')
  assert_resumes_exactly(tmp_path, straight)


# 12. A run's identity is its data.


def test_a_resume_on_other_data_is_refused_naming_each_difference(tmp_path, monkeypatch):
  sizes = dataclasses.replace(data.DATASETS['fashion_mnist'], num_train=64, num_test=4)
  monkeypatch.setitem(data.DATASETS, 'fashion_mnist', sizes)
  (tmp_path / 'data').mkdir()
  fashion_files(tmp_path / 'data', n_train=64, n_labels=64)
  config = smoke()
  config.data.name, config.data.source, config.data.dir = 'fashion_mnist', 'local', str(tmp_path / 'data')
  config.data.synthetic_num_train, config.data.synthetic_num_test = 64, 4  # the same sizes either way
  config.eval_batch_size, config.halt_after_steps = 4, 2
  train.train_and_evaluate(config, str(tmp_path / 'run'))
  config.halt_after_steps = 0
  config.data.source = 'synthetic'  # a runtime field: where to look, not what was found
  with pytest.raises(
    ConfigError, match=r"holds a run on other data \(data.sha1: .*; data.source: 'local' -> 'synthetic'\)"
  ):
    train.train_and_evaluate(config, str(tmp_path / 'run'))
  config.data.source = 'local'
  fashion_files(tmp_path / 'data', n_train=64, n_labels=64, label=4)  # the same files, other labels
  with pytest.raises(ConfigError, match=r'holds a run on other data \(data.sha1: '):
    train.train_and_evaluate(config, str(tmp_path / 'run'))
  assert [r['step'] for r in records(str(tmp_path / 'run'))] == [2] and os.listdir(
    tmp_path / 'run' / 'checkpoints'
  ) == ['2']


# 13. Records without a checkpoint: never discarded silently.


def test_records_without_a_checkpoint_are_kept_unless_told_to_start_over(tmp_path, straight):
  halted(tmp_path)
  shutil.rmtree(tmp_path / 'checkpoints')
  kept = (tmp_path / 'metrics.jsonl').read_text()
  with pytest.raises(workdir_lib.WorkdirError, match='has 1 records up to step 8 in metrics.jsonl but no checkpoint'):
    train.train_and_evaluate(smoke(), str(tmp_path))
  assert (tmp_path / 'metrics.jsonl').read_text() == kept
  train.train_and_evaluate(smoke(), str(tmp_path), start_over=True)
  (earlier,) = glob.glob(str(tmp_path / 'earlier' / '*'))
  assert open(f'{earlier}/metrics.jsonl').read() == kept and os.path.isdir(f'{earlier}/tensorboard')
  assert strip(records(str(tmp_path))) == straight[1]
  chex.assert_trees_all_equal(final_state(smoke(), str(tmp_path)).params, straight[0].params)


def test_start_over_from_the_command_line(tmp_path):
  halted(tmp_path, step=8)
  shutil.rmtree(tmp_path / 'checkpoints')
  args = ['--config=configs/smoke.py', f'--workdir={tmp_path}', '--config.progress=none']
  refused, again = run_cli_cases([args, [*args, '--start_over']])
  assert refused['code'] == 3 and 'rerun with --start_over' in one_error_line(refused['output'])
  assert again['code'] == 0, again['output'][-2000:]
  assert [r['step'] for r in records(str(tmp_path))] == [8, 16] and glob.glob(str(tmp_path / 'earlier' / '*'))


# 14. Signals at any moment: before training, twice, SIGHUP.


def caught_signals(pid: int) -> int:
  with open(f'/proc/{pid}/status') as f:
    return int(next(line for line in f if line.startswith('SigCgt:')).split()[1], 16)


def test_a_signal_before_training_ends_at_once_with_its_status_and_one_line(tmp_path):
  args = ['--config=configs/smoke.py', f'--workdir={tmp_path}', '--config.progress=none']
  proc = subprocess.Popen([sys.executable, '-m', 'g2g_jax.main', *args], cwd=ROOT, stderr=subprocess.PIPE, text=True)
  try:
    deadline = time.time() + 60
    while not caught_signals(proc.pid) & (1 << (signal.SIGHUP - 1)):  # the command line's handlers are in place
      assert time.time() < deadline and proc.poll() is None
      time.sleep(0.01)
    proc.send_signal(signal.SIGHUP)  # JAX is still loading
    _, err = proc.communicate(timeout=120)
  finally:
    proc.kill()
  assert proc.returncode == 129, err[-2000:]
  assert 'interrupted by SIGHUP outside training' in one_error_line(err)
  assert not glob.glob(str(tmp_path / 'checkpoints' / '*'))


@pytest.mark.parametrize('signum,status', [(signal.SIGTERM, 75), (signal.SIGHUP, 129)])
def test_a_second_signal_while_stopping_keeps_the_first_ones_status(tmp_path, signum, status):
  proc = start_training(tmp_path)
  try:
    proc.send_signal(signum)
    time.sleep(0.02)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
  finally:
    proc.kill()
  assert proc.returncode == status, err[-2000:]
  line = one_error_line(err)
  assert f'stopped by {signal.Signals(signum).name} at step' in line and 'already stopping' in err
  step = int(line.split('at step ')[1].split(';')[0])
  assert str(step) in os.listdir(tmp_path / 'checkpoints')


# 15. Any write that fails, on any file of the run: one line, status 3, nothing lost.


def file_size_limited(limit: int) -> list[str]:
  """A run_cli prefix: the command line, with writes past `limit` bytes failing with EFBIG (not
  killing the process with SIGXFSZ, the default)."""
  code = (
    'import os, resource, signal, sys; signal.signal(signal.SIGXFSZ, signal.SIG_IGN); '
    f'resource.setrlimit(resource.RLIMIT_FSIZE, ({limit}, {limit})); '
    "os.execv(sys.executable, [sys.executable, '-m', 'g2g_jax.main', *sys.argv[1:]])"
  )
  return ['-c', code]


@pytest.mark.parametrize('limit', [0, 100, 1000, 5000])  # the lock, TensorBoard, metrics.jsonl, a checkpoint
def test_a_failed_write_anywhere_is_one_line_naming_the_file_and_the_run_resumes(tmp_path, straight, limit):
  halted(tmp_path, step=8)
  kept = {name: (tmp_path / name).read_bytes() for name in ('metrics.jsonl', 'config.json')}
  env = {'JAX_COMPILATION_CACHE_DIR': ''}  # the cache's own writes would fail first
  r = run_cli(
    '--config=configs/smoke.py',
    f'--workdir={tmp_path}',
    '--config.progress=none',
    env=env,
    prefix=file_size_limited(limit),
  )
  assert r.returncode == 3, r.stderr[-3000:]
  line = one_error_line(r.stderr)
  assert str(tmp_path) in line and 'rerun' in line  # EFBIG: 'File too large', or tensorstore's OUT_OF_RANGE
  for name, content in kept.items():
    assert (tmp_path / name).read_bytes()[: len(content)] == content  # nothing written is lost
  assert_resumes_exactly(tmp_path, straight)


# 16. load_run needs no mesh.


def test_load_run_loads_on_any_number_of_devices(tmp_path):
  config = smoke()
  config.num_devices = 2  # the suite has 4
  train.train_and_evaluate(config, str(tmp_path))
  code = f'import g2g_jax; run = g2g_jax.load_run({str(tmp_path)!r}); print(int(run.state.step))'
  for devices in (1, 3):  # fewer than the run's, and a count its batch of 32 does not split over
    env = {'XLA_FLAGS': f'--xla_force_host_platform_device_count={devices}'}
    r = run_cli(prefix=['-c', code], env=env)
    assert r.returncode == 0 and r.stdout.split()[-1] == '16', r.stderr[-2000:]


# 17. The step loop on several CPU devices.


@pytest.mark.parametrize('devices', [2, 4])
def test_the_step_loop_never_deadlocks_on_several_cpu_devices(tmp_path, devices):
  """Fashion-MNIST-sized steps, 64 of them with no metrics read in between: before one program
  was kept in flight, XLA:CPU aborted in an all-reduce within seconds, 2 of 2 times."""
  r = run_cli(
    '--config=configs/fashion_mnist.py',
    f'--workdir={tmp_path}',
    '--config.num_epochs=1',
    '--config.data.source=synthetic',
    '--config.data.synthetic_num_train=16384',
    '--config.data.synthetic_num_test=1000',
    '--config.log_every_steps=1000',
    '--config.progress=none',
    env={'XLA_FLAGS': f'--xla_force_host_platform_device_count={devices}', 'JAX_DISABLE_MOST_OPTIMIZATIONS': '0'},
  )
  assert r.returncode == 0, r.stderr[-3000:]
  assert [row['step'] for row in records(str(tmp_path))] == [64]
