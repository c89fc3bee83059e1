"""Save / restore of the TrainState and the loop position, with orbax.

A checkpoint holds the whole TrainState (params, optimizer state, masks, key, step) and a
small JSON `meta`: the run's config, the best accuracy so far, the current epoch's running
sums and the metrics records up to its step. orbax writes each checkpoint to a temporary
folder and renames it when complete, so a crash mid-save leaves the previous checkpoint
as the latest.

Saves are asynchronous: `save` returns once orbax has copied the arrays to host memory,
and the files are written in the background while training goes on. The next save,
`latest_step`, `restore` and `close` wait for a save in flight to finish.

A checkpoint that cannot be read (a truncated file, say) is skipped for the one before
it and moved to WORKDIR/unreadable_checkpoints/, so nothing is deleted; when none can be
read, restore says why for each and moves nothing.
"""

import contextlib
import os
import shutil
from typing import Any

import jax
import orbax.checkpoint as ocp
from absl import logging

from g2g_jax import hosts
from g2g_jax import workdir as workdir_lib
from g2g_jax.workdir import WorkdirError

CHECKPOINT_DIR = 'checkpoints'
UNREADABLE_DIR = 'unreadable_checkpoints'


class _QuietOrbax:
  """Drops orbax's INFO chatter (dozens of lines per save) from the absl log."""

  def filter(self, record) -> bool:
    return record.levelno > logging.converter.STANDARD_INFO or '/orbax/' not in record.pathname


logging.get_absl_logger().addFilter(_QuietOrbax())


def _os_error(e: BaseException) -> OSError | None:
  """The OSError behind an exception, if one is in its chain."""
  while e is not None:
    if isinstance(e, OSError):
      return e
    e = e.__cause__ or e.__context__
  return None


def _first_line(e: BaseException) -> str:
  text = str(e).strip().splitlines()
  first = text[0].split(' See full')[0] if text else ''  # tensorstore appends a long repr
  return f'{type(e).__name__}: {first[:200]}'


def _tree(state) -> dict:
  """A TrainState as the checkpoint holds it: one flat dict, the layout every checkpoint has had
  (workdirs from before the Sparsity moved into the state resume)."""
  sparsity = state.sparsity
  return {
    'step': state.step,
    'params': state.params,
    'opt_state': state.opt_state,
    'key': state.key,
    'masks': sparsity.masks,
    'last_grown': sparsity.last_grown,
    'layout': sparsity.layout,
    'groups': sparsity.groups,
  }


def _state(template, tree: dict):
  """The TrainState a checkpoint's tree holds, with the template's static fields."""
  parts = {k: tree[k] for k in ('masks', 'last_grown', 'layout', 'groups')}
  return template.replace(
    step=tree['step'],
    params=tree['params'],
    opt_state=tree['opt_state'],
    key=tree['key'],
    sparsity=template.sparsity.replace(**parts),
  )


class Checkpointer:
  def __init__(self, workdir: str, max_to_keep: int = 2):
    self.workdir = os.path.abspath(workdir)
    self.directory = os.path.join(self.workdir, CHECKPOINT_DIR)
    self._max_to_keep = max_to_keep
    self._manager = self._make_manager()

  def _make_manager(self):
    options = ocp.CheckpointManagerOptions(max_to_keep=self._max_to_keep, create=True)
    return ocp.CheckpointManager(self.directory, options=options)

  @contextlib.contextmanager
  def _writing(self, what: str):
    """Turns a failed save (a full disk, a lost folder, any error of orbax's writers) into one
    WorkdirError that says what it was and which checkpoint is still there."""
    try:
      yield
    except Exception as e:  # noqa: BLE001 (orbax raises OSError, ValueError, RuntimeError... from its threads)
      cause = _os_error(e)
      reason = f'{cause.strerror or cause}' if cause is not None else _first_line(e)
      advice = workdir_lib.what_to_do(cause) if cause is not None else 'fix the cause, then rerun to resume'
      if 'No space left on device' in str(e):
        reason, advice = 'no space left on device', 'free some space, then rerun to resume'
      try:
        self._manager.reload()
        steps = self._manager.all_steps()
      except Exception:  # noqa: BLE001 (the folder itself may be gone)
        steps = []
      intact = (
        f'the checkpoint at step {max(steps)} is intact' if steps else f'no complete checkpoint is in {self.directory}'
      )
      raise WorkdirError(f'{what} failed: {reason} in {self.directory}; {intact}: {advice}') from None

  def wait(self):
    with self._writing('writing a checkpoint'):
      self._manager.wait_until_finished()

  def latest_step(self) -> int | None:
    """The latest complete checkpoint's step (after waiting for a save in flight)."""
    self.wait()
    return self._manager.latest_step()

  def save(self, step: int, state: Any, meta: dict):
    """Starts saving; returns once the arrays are copied to the host (the caller may then
    donate or overwrite them) and writes the files in the background."""
    self.wait()
    with self._writing(f'writing the checkpoint of step {step}'):
      self._manager.save(
        step,
        args=ocp.args.Composite(state=ocp.args.StandardSave(_tree(state)), meta=ocp.args.JsonSave(meta)),
        force=True,
      )

  def _newest_first(self, read_one, move_aside: bool = True):
    """read_one(step) for the newest checkpoint it succeeds on, as (step, result); the newer
    unreadable ones are moved aside (when move_aside). None when there is no checkpoint."""
    self.wait()
    self._manager.reload()
    steps = sorted(self._manager.all_steps(), reverse=True)
    failures = []
    for step in steps:
      try:
        result = read_one(step)
      except Exception as e:  # noqa: BLE001 (any unreadable checkpoint: tensorstore, JSON, orbax errors)
        failures.append((step, _first_line(e)))
        continue
      if failures and not move_aside:
        return step, result
      if hosts.is_primary():
        for bad, why in failures:
          self._move_aside(bad, why)
      if failures:
        hosts.barrier('checkpoints moved aside')
        self._manager.close()
        self._manager = self._make_manager()
      return step, result
    if failures:
      reasons = '; '.join(f'step {s}: {why}' for s, why in failures)
      raise WorkdirError(
        f'no checkpoint in {self.directory} can be read ({reasons}). Nothing was moved; '
        'move the checkpoints folder away to start this run again'
      )
    return None

  def _move_aside(self, step: int, why: str):
    target = os.path.join(self.workdir, UNREADABLE_DIR, str(step))
    os.makedirs(os.path.dirname(target), exist_ok=True)
    if os.path.exists(target):
      shutil.rmtree(target)
    shutil.move(os.path.join(self.directory, str(step)), target)
    logging.warning('skipped the checkpoint at step %d (%s); moved it to %s', step, why, target)

  def restore(self, template: Any) -> tuple[Any, dict] | None:
    """(state, meta) of the newest readable checkpoint, shaped and placed like `template`."""
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, _tree(template))

    def read(step):
      args = ocp.args.Composite(state=ocp.args.StandardRestore(abstract), meta=ocp.args.JsonRestore())
      restored = self._manager.restore(step, args=args)
      return _state(template, restored.state), restored.meta

    found = self._newest_first(read)
    return None if found is None else found[1]

  def meta(self) -> dict | None:
    """The meta of the newest checkpoint whose meta can be read, or None. Moves nothing."""

    def read(step):
      return self._manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore())).meta

    with contextlib.suppress(WorkdirError):
      found = self._newest_first(read, move_aside=False)
      return None if found is None else found[1]
    return None

  def close(self):
    try:
      self.wait()
    finally:
      self._manager.close()


def saved_config(workdir: str) -> dict | None:
  """The config a workdir belongs to: its newest checkpoint's, else its config.json's
  (a checkpoint keeps it, so the workdir's identity does not hang on one file)."""
  meta = None
  if os.path.isdir(os.path.join(workdir, CHECKPOINT_DIR)):
    with contextlib.closing(Checkpointer(workdir)) as ckpt:
      meta = ckpt.meta()
  return (meta or {}).get('config') or workdir_lib.read_config(workdir)
