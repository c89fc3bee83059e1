"""Test-wide settings (four CPU devices, strict rank promotion, fast compiles) and shared helpers."""

import os

# Must be set before JAX initialises its backends: tests see 4 CPU devices, so every
# test exercises the data-parallel path.
os.environ['XLA_FLAGS'] = os.environ.get('XLA_FLAGS', '') + ' --xla_force_host_platform_device_count=4'
os.environ.setdefault('JAX_PLATFORMS', 'cpu')
# XLA compiles faster with most optimizations off, and the golden values hold under it; set
# in the environment, so CLI subprocesses get it too.
os.environ.setdefault('JAX_DISABLE_MOST_OPTIMIZATIONS', '1')
# One persistent compilation cache for the whole session, CLI subprocesses included: most
# tests compile the same smoke programs again (it halves tests/faults_test.py).
if 'JAX_COMPILATION_CACHE_DIR' not in os.environ:
  import atexit
  import shutil
  import tempfile

  os.environ['JAX_COMPILATION_CACHE_DIR'] = tempfile.mkdtemp(prefix='g2g_jax_tests_cache_')
  atexit.register(shutil.rmtree, os.environ['JAX_COMPILATION_CACHE_DIR'], True)
os.environ.setdefault('JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS', '0')
os.environ.setdefault('JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES', '-1')

import jax  # noqa: E402
import pytest  # noqa: E402

jax.config.update('jax_numpy_rank_promotion', 'raise')

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def readme_example(k: int) -> str:
  """The k-th Python block of the README's "G2G in your own model" section (0: Linen, 1: NNX)."""
  import re

  with open(os.path.join(ROOT, 'README.md')) as f:
    text = f.read()
  section = text[text.index('## G2G in your own model') :]
  return re.findall(r'```python\n(.*?)```', section, re.S)[k]


def load_config(name: str = 'smoke', row: str = 'g2g'):
  """A config file from configs/ as the CLI would load it."""
  import importlib.util

  spec = importlib.util.spec_from_file_location(f'cfg_{name}', os.path.join(ROOT, 'configs', f'{name}.py'))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config(row)


@pytest.fixture
def smoke_config():
  config = load_config('smoke')
  config.progress = 'none'
  return config


# ---------------------------------------------------------------------------------
# Helpers shared by the test modules (no test module imports another).


def final_state(config, workdir, k=None):
  """The state saved by a run's last checkpoint (stacked with num_seeds > 1; replica k if given)."""
  from g2g_jax import checkpoint, replicas, train

  ckpt = checkpoint.Checkpointer(workdir)
  state, _ = ckpt.restore(train.make_train_state(config))
  ckpt.close()
  return state if k is None else replicas.replica(state, k)


def records(workdir):
  from g2g_jax import metrics

  return metrics.read_records(workdir)


def synthetic_batches(config, n):
  """n host batches of config.batch_size synthetic examples."""
  from g2g_jax import data

  ds = data.load_dataset(data.DataSpec('synthetic', synthetic_num_train=config.batch_size * n))
  b = config.batch_size
  return [
    {'image': ds.train_images[i * b : (i + 1) * b], 'label': ds.train_labels[i * b : (i + 1) * b]} for i in range(n)
  ]


def run_cli(*args, cwd=ROOT, timeout=300, prefix=None, env=None):
  """`python -m g2g_jax.main ARGS` (or `python PREFIX... ARGS`) in a subprocess; env adds to the
  environment."""
  import subprocess
  import sys

  cmd = [sys.executable, *(prefix or ['-m', 'g2g_jax.main'])]
  return subprocess.run(
    [*cmd, *args],
    cwd=cwd,
    capture_output=True,
    text=True,
    timeout=timeout,
    env={**os.environ, **(env or {})},
  )


def run_cli_cases(cases: list[list[str]], cwd=ROOT) -> list[dict]:
  """Many command lines that end early (bad input), each in its own forked process: [{code, output}]."""
  import json
  import subprocess
  import sys

  driver = os.path.join(ROOT, 'tests', 'cli_cases.py')
  r = subprocess.run([sys.executable, driver, json.dumps(cases)], cwd=cwd, capture_output=True, text=True, timeout=600)
  assert r.returncode == 0, r.stderr[-3000:]
  return json.loads(r.stdout.strip().splitlines()[-1])


def one_error_line(output: str) -> str:
  """The one `error: ...` line of a command's output, which must hold no traceback, and whose
  message the output holds only once."""
  assert 'Traceback' not in output, output[-3000:]
  errors = [line for line in output.splitlines() if line.startswith('error: ')]
  assert len(errors) == 1, output[-3000:]
  assert output.count(errors[0][len('error: ') :]) == 1, output[-3000:]  # not logged a second time
  return errors[0]
