"""Multi-process training for real: two local CPU processes on loopback (jax.distributed,
gloo collectives), one device each, against one process with two devices."""

import glob
import os
import signal
import socket
import subprocess
import sys
import time

import chex

from conftest import ROOT, final_state, load_config, records

TIMING = ('examples_per_sec', 'epoch_seconds', 'compile_seconds')
EPOCHS = 3


def free_port() -> int:
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    return s.getsockname()[1]


def start(workdir, devices: int, *extra) -> subprocess.Popen:
  env = {**os.environ, 'XLA_FLAGS': f'--xla_force_host_platform_device_count={devices}'}
  args = [f'--config={ROOT}/configs/smoke.py', f'--workdir={workdir}', f'--config.num_epochs={EPOCHS}']
  return subprocess.Popen(
    [sys.executable, '-m', 'g2g_jax.main', *args, '--config.progress=none', *extra],
    cwd=ROOT,
    env=env,
    stdout=subprocess.DEVNULL,
    stderr=subprocess.PIPE,
    text=True,
  )


def start_pair(workdir) -> list[subprocess.Popen]:
  coordinator = [f'--coordinator_address=127.0.0.1:{free_port()}', '--num_processes=2']
  gloo = '--jax_cpu_collectives_implementation=gloo'
  return [start(workdir, 1, *coordinator, f'--process_id={i}', gloo) for i in (0, 1)]


def finish(procs, timeout=120):
  for p in procs:
    _, err = p.communicate(timeout=timeout)
    assert p.returncode == 0, err[-3000:]


def config():
  c = load_config('smoke')
  c.num_epochs = EPOCHS
  return c


def strip(rows):
  return [{k: v for k, v in r.items() if k not in TIMING} for r in rows]


def test_two_processes_equal_one_process_with_two_devices_also_after_a_kill(tmp_path):
  procs = []
  try:
    one = start(tmp_path / 'one', 2)
    procs = [one, *start_pair(tmp_path / 'two')]
    finish(procs)
    reference = final_state(config(), str(tmp_path / 'one'))
    chex.assert_trees_all_equal(final_state(config(), str(tmp_path / 'two')).params, reference.params)
    chex.assert_trees_all_equal(final_state(config(), str(tmp_path / 'two')).opt_state, reference.opt_state)
    assert strip(records(str(tmp_path / 'two'))) == strip(records(str(tmp_path / 'one')))
    assert not glob.glob(str(tmp_path / 'two' / '.shared_check_*'))  # the shared-filesystem probe is gone

    procs = start_pair(tmp_path / 'killed')
    deadline = time.time() + 120
    while not glob.glob(str(tmp_path / 'killed' / 'checkpoints' / '8')):  # mid-run: epoch 1 saved
      if time.time() > deadline or any(p.poll() is not None for p in procs):
        for p in procs:
          p.kill()
        raise AssertionError('no checkpoint at step 8: ' + ' | '.join(p.communicate()[1][-1500:] for p in procs))
      time.sleep(0.05)
    procs[1].send_signal(signal.SIGKILL)  # one host dies; its partner is then stopped too
    procs[1].wait()
    procs[0].send_signal(signal.SIGKILL)
    procs[0].wait()
    procs = start_pair(tmp_path / 'killed')
    finish(procs)
    chex.assert_trees_all_equal(final_state(config(), str(tmp_path / 'killed')).params, reference.params)
    assert strip(records(str(tmp_path / 'killed'))) == strip(records(str(tmp_path / 'one')))
  finally:
    for p in procs:
      if p.poll() is None:
        p.kill()
        p.wait()
