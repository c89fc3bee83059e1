"""A run's life in its workdir: identity, lock, stop requests, restore, records, saves, divergence.

`open_run(...)` is a context manager that owns everything the training loop must not get
wrong about the workdir. Entering it locks the workdir for this run, checks that the
workdir holds this run (the same config and the same data) or none, restores the newest
readable checkpoint, and opens the metrics writer. The loop then asks it to `save`, whether
to stop (`stop_now`: a signal on any process), and turns a non-finite value into the
divergence error (`diverged`). Leaving it waits for a save in flight and releases all.

If this is your first read of the loop, skip this module: it changes no number.
"""

import contextlib
import datetime
import os
import shutil

import jax
import numpy as np
from absl import logging

from g2g_jax import checkpoint as ckpt_lib
from g2g_jax import hosts, interrupts
from g2g_jax import metrics as metrics_lib
from g2g_jax import workdir as workdir_lib
from g2g_jax.config import ConfigError, check_same_run
from g2g_jax.workdir import WorkdirError

EARLIER_DIR = 'earlier'  # where --start_over moves a workdir's old records


class RunContext:
  """What open_run yields: the restored state and step, the writer, and the run's actions."""

  def __init__(self, workdir: str, identity: dict, data_identity: dict, num_seeds: int):
    self.workdir, self.identity, self.data_identity = workdir, identity, data_identity
    self.num_seeds = num_seeds
    self.ckpt = None
    self.stop = None
    self.writer = None
    self.state, self.step = None, 0
    self.best = np.zeros(num_seeds)
    self.epoch_sums = metrics_lib.EpochSums(num_seeds).to_meta()

  def stop_now(self) -> bool:
    """Whether to stop at this step boundary: every process stops at the same step, so one
    signalled process stops them all."""
    return hosts.any_process(bool(self.stop))

  def save(self, step: int, state, sums: metrics_lib.EpochSums, best):
    meta = {
      'best_test_accuracy': list(best),
      'epoch_sums': sums.to_meta(),
      'config': self.identity,
      'data': self.data_identity,
      'records': self.writer.records(),
    }
    self.ckpt.save(step, state, meta)

  def diverged(self, what: str, value, step: int, replica: int = 0) -> FloatingPointError:
    good = self.ckpt.latest_step()
    return FloatingPointError(
      f'non-finite {what} ({value}) at step {step}{f" (replica {replica})" if self.num_seeds > 1 else ""}; '
      f'stopped. Last good checkpoint in {self.workdir}: {"none yet" if good is None else f"step {good}"}, '
      'left intact.'
    )

  def stopped(self, step: int) -> interrupts.Stopped:
    """The exception that ends a stopped run, once its checkpoint is written."""
    self.ckpt.wait()
    logging.warning(
      'stopped at step %d: checkpoint saved in %s; rerun the command to resume', step, self.ckpt.directory
    )
    return interrupts.Stopped(self.stop.signum, step)


def _data_differences(saved: dict | None, current: dict) -> list[str]:
  if not saved or saved == current:  # a run from before checkpoints kept their data
    return []
  return [
    f'data.{k}: {saved.get(k)!r} -> {current.get(k)!r}' for k in sorted(current) if saved.get(k) != current.get(k)
  ]


def _move_records_aside(workdir: str):
  """Moves the files a run's history lives in (records, TensorBoard) to WORKDIR/earlier/<time>/."""
  target = os.path.join(workdir, EARLIER_DIR, datetime.datetime.now().strftime('%Y%m%d-%H%M%S'))
  for name in (metrics_lib.METRICS_FILE, 'tensorboard'):
    path = os.path.join(workdir, name)
    if os.path.exists(path):
      os.makedirs(target, exist_ok=True)
      shutil.move(path, os.path.join(target, name))
  logging.warning('started over: the earlier records are in %s', target)


@contextlib.contextmanager
def open_run(workdir: str, config_dict: dict, data_identity: dict, state, *, num_seeds: int, start_over: bool):
  """Enters a run in `workdir` (a path check_path accepted) with this config and data; yields a
  RunContext whose state is `state` (placed as given) or the newest checkpoint's."""
  run = RunContext(workdir, config_dict, data_identity, num_seeds)
  hosts.check_shared(workdir)
  with contextlib.ExitStack() as stack:
    run.stop = stack.enter_context(interrupts.StopRequests())  # first in, last out: no signal cuts the cleanup
    lock = workdir_lib.Lock(workdir)  # held by process 0 for every process
    hosts.on_primary(lock.__enter__, 'locking the workdir')
    if hosts.is_primary():
      stack.push(lock)
    run.ckpt = stack.enter_context(contextlib.closing(ckpt_lib.Checkpointer(workdir)))
    saved_meta = run.ckpt.meta() or {}
    saved = saved_meta.get('config') or workdir_lib.read_config(workdir)  # again, now that the workdir is ours
    check_same_run(saved, config_dict, workdir)
    run.identity = saved or config_dict
    differences = _data_differences(saved_meta.get('data'), data_identity)
    if differences:
      raise ConfigError(
        f'workdir {workdir} holds a run on other data ({"; ".join(differences)}); '
        'use a new --workdir, or the data it was trained on to resume'
      )
    hosts.on_primary(lambda: workdir_lib.keep_config(workdir, run.identity), 'writing config.json')
    restored = run.ckpt.restore(state)
    if restored is None:
      earlier = metrics_lib.read_records(workdir)
      if earlier and not start_over:
        raise WorkdirError(
          f'workdir {workdir} has {len(earlier)} records up to step {earlier[-1]["step"]} in '
          f'{metrics_lib.METRICS_FILE} but no checkpoint to resume from: rerun with --start_over to train it '
          f'again from step 0 (the records are moved to {os.path.join(workdir, EARLIER_DIR)}/), or use a new --workdir'
        )
      if earlier or os.path.exists(os.path.join(workdir, 'tensorboard')):
        hosts.on_primary(lambda: _move_records_aside(workdir), 'moving the earlier records aside')
      run.state = state
    else:
      run.state, meta = restored
      run.best = np.asarray(meta['best_test_accuracy'], np.float64)
      run.epoch_sums = meta['epoch_sums']
      logging.info('resumed from the checkpoint at step %d in %s', int(np.ravel(run.state.step)[0]), run.ckpt.directory)
    run.step = int(np.ravel(jax.device_get(run.state.step))[0])
    backup = restored[1].get('records') if restored else None
    run.writer = metrics_lib.MetricWriter(workdir, run.step, backup, primary=hosts.is_primary())
    stack.enter_context(contextlib.closing(run.writer))
    yield run
