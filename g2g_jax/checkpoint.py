"""Save / restore of the TrainState and the loop position, with orbax.

A checkpoint holds the whole TrainState (params, optimizer state, masks, key, step)
and a small JSON `meta` (best accuracy so far, the current epoch's running sums).
orbax writes each checkpoint to a temporary folder and renames it when complete, so
a crash mid-save leaves the previous checkpoint as the latest.

Saves are asynchronous: `save` returns once orbax has copied the arrays to host
memory, and the files are written in the background while training goes on. The next
save, `latest_step`, `restore` and `close` wait for a save in flight to finish.
"""

import os
from typing import Any

import jax
import orbax.checkpoint as ocp
from absl import logging

CHECKPOINT_DIR = 'checkpoints'


class _QuietOrbax:
  """Drops orbax's INFO chatter (dozens of lines per save) from the absl log."""

  def filter(self, record) -> bool:
    return record.levelno > logging.converter.STANDARD_INFO or '/orbax/' not in record.pathname


logging.get_absl_logger().addFilter(_QuietOrbax())


class Checkpointer:
  def __init__(self, workdir: str, max_to_keep: int = 2):
    self.directory = os.path.join(os.path.abspath(workdir), CHECKPOINT_DIR)
    self._manager = ocp.CheckpointManager(
      self.directory,
      options=ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=True),
    )

  def latest_step(self) -> int | None:
    """The latest complete checkpoint's step (after waiting for a save in flight)."""
    self._manager.wait_until_finished()
    return self._manager.latest_step()

  def save(self, step: int, state: Any, meta: dict):
    """Starts saving; returns once the arrays are copied to the host (the caller may then
    donate or overwrite them) and writes the files in the background."""
    self._manager.save(
      step,
      args=ocp.args.Composite(state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta)),
      force=True,
    )

  def restore(self, template: Any, step: int | None = None) -> tuple[Any, dict] | None:
    """(state, meta) of the given or latest step, shaped and placed like `template`."""
    latest = self.latest_step()  # waits for a save in flight
    step = latest if step is None else step
    if step is None:
      return None
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, template)
    restored = self._manager.restore(
      step,
      args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract), meta=ocp.args.JsonRestore()),
    )
    return restored.state, restored.meta

  def close(self):
    self._manager.close()
