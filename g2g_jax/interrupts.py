"""Stopping a run cleanly: SIGTERM and SIGINT (Ctrl-C) become a request that the training
loop honours at the next step boundary, by saving a checkpoint and raising Stopped.

A second signal stops at once (KeyboardInterrupt); the checkpoint before it stays intact.
Handlers are installed only in the main thread, and the previous ones are put back.
"""

import signal
import threading

from absl import logging

SIGNALS = (signal.SIGTERM, signal.SIGINT)


class Stopped(Exception):
  """A run stopped by a signal after saving a checkpoint at `step`; rerunning resumes it."""

  def __init__(self, signum: int | None, step: int):
    signum = signal.SIGTERM if signum is None else signum  # a process another one's signal stopped
    self.signum, self.step = signum, step
    super().__init__(
      f'stopped by {signal.Signals(signum).name} at step {step}; a checkpoint was saved: rerun the command to resume'
    )


class StopRequests:
  """A context in which SIGTERM / SIGINT set `signum` instead of ending the process."""

  def __init__(self):
    self.signum = None
    self._previous = {}

  def __bool__(self) -> bool:
    return self.signum is not None

  def _handle(self, signum, frame):
    del frame
    if self.signum is not None:
      raise KeyboardInterrupt  # a second signal: stop now
    self.signum = signum
    logging.warning('%s received: stopping at the next step boundary, after a checkpoint', signal.Signals(signum).name)

  def __enter__(self):
    if threading.current_thread() is threading.main_thread():
      self._previous = {s: signal.signal(s, self._handle) for s in SIGNALS}
    return self

  def __exit__(self, *exc):
    for s, handler in self._previous.items():
      signal.signal(s, handler)
    self._previous = {}
