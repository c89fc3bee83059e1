"""Stopping a run cleanly on SIGTERM, SIGINT (Ctrl-C) and SIGHUP (a closed terminal).

Outside the training loop (imports, data loading, compiling) the command line's handlers
(`end_on_signals`) end the process at once, with one line and the signal's status: nothing of
the run is being written then. Inside it, `StopRequests` turns a signal into a request that
the loop honours at the next step boundary, by saving a checkpoint and raising `Stopped`.
Further signals while a run stops are logged and ignored, so they cannot interrupt the
checkpoint being written; kill -9 still ends the process at once, and the checkpoint before
stays intact. Handlers are installed only in the main thread, and the previous ones are put back.
"""

import os
import signal
import sys
import threading

from absl import logging

SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
# A stopped process's exit status, by signal: SIGTERM's 75 is EX_TEMPFAIL (requeue and rerun).
EXIT_STATUS = {signal.SIGTERM: 75, signal.SIGHUP: 129, signal.SIGINT: 130}


class Stopped(Exception):
  """A run stopped by a signal after saving a checkpoint at `step`; rerunning resumes it."""

  def __init__(self, signum: int | None, step: int):
    signum = signal.SIGTERM if signum is None else signum  # a process another one's signal stopped
    self.signum, self.step = signum, step
    super().__init__(
      f'stopped by {signal.Signals(signum).name} at step {step}; a checkpoint was saved: rerun the command to resume'
    )


def _end_now(signum, frame):
  del frame
  print(
    f'error: interrupted by {signal.Signals(signum).name} outside training; the workdir keeps its last checkpoint, '
    'if any: rerun the command to resume',
    file=sys.stderr,
    flush=True,
  )
  os._exit(EXIT_STATUS[signum])  # nothing is half-written outside the loop: no cleanup to wait for


def end_on_signals():
  """Makes SIGTERM, SIGINT and SIGHUP end the process at once (the command line's, outside training)."""
  if threading.current_thread() is threading.main_thread():
    for s in SIGNALS:
      signal.signal(s, _end_now)


class StopRequests:
  """A context in which the signals set `signum` instead of ending the process."""

  def __init__(self):
    self.signum = None
    self._previous = {}

  def __bool__(self) -> bool:
    return self.signum is not None

  def _handle(self, signum, frame):
    del frame
    if self.signum is not None:
      logging.warning('%s received: already stopping, after a checkpoint', signal.Signals(signum).name)
      return
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
