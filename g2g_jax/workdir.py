"""A run's folder: checks that it can hold a run, its exclusive lock, and its config file.

One run owns a workdir at a time: `Lock` holds an flock on WORKDIR/.lock for the whole
run. The kernel drops an flock when its process dies however it dies, so a lock left by a
killed run is never stale. Files the run rewrites are written whole or not at all
(`write_json`: a temporary file, then a rename).
"""

import contextlib
import datetime
import errno
import fcntl
import json
import os
import socket

from absl import logging

LOCK_FILE = '.lock'
CONFIG_FILE = 'config.json'


class WorkdirError(OSError):
  """A workdir that cannot hold this run: the message names it and says what to do."""


def check_path(workdir: str) -> str:
  """The workdir as an absolute path, if a run can create and write it; else a WorkdirError."""
  if not workdir:
    raise WorkdirError('--workdir is empty: name a folder for checkpoints and metrics')
  path = os.path.abspath(os.path.expanduser(workdir))
  if os.path.exists(path) and not os.path.isdir(path):
    raise WorkdirError(f'workdir {path} is a file, not a folder: use another --workdir')
  existing = path
  while not os.path.exists(existing):
    existing = os.path.dirname(existing)
  if not os.path.isdir(existing):
    raise WorkdirError(f'workdir {path} cannot be created: {existing} is a file')
  probe = os.path.join(existing, f'.g2g_write_probe_{os.getpid()}')
  try:  # a real write: permissions, read-only filesystems and root all answer it truthfully
    with open(probe, 'w'):
      pass
    os.remove(probe)
  except OSError as e:
    what = 'is not writable' if existing == path else f'cannot be created in {existing}'
    raise WorkdirError(f'workdir {path} {what} ({e.strerror}): use a folder you can write') from None
  return path


@contextlib.contextmanager
def writing(path: str):
  """Turns a failed write to path (a full disk, a lost permission, any errno) into one WorkdirError."""
  try:
    yield
  except WorkdirError:
    raise
  except OSError as e:
    raise WorkdirError(f'cannot write {path} ({e.strerror or e}): {what_to_do(e)}') from None


def what_to_do(e: OSError) -> str:
  if e.errno in (errno.ENOSPC, errno.EDQUOT):
    return 'free some space, then rerun to resume'
  if e.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
    return 'make the folder writable, then rerun to resume'
  return 'fix the folder or the disk, then rerun to resume'


class Lock:
  """An exclusive lock on a workdir, held from entering the context to leaving it."""

  def __init__(self, workdir: str):
    self.path = os.path.join(workdir, LOCK_FILE)
    self._file = None

  def __enter__(self):
    new = not os.path.exists(self.path)
    with writing(self.path):
      os.makedirs(os.path.dirname(self.path), exist_ok=True)
      f = open(self.path, 'a+b', buffering=0)  # noqa: SIM115 (held until __exit__; unbuffered: close never writes)
    try:
      fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as e:
      f.seek(0)
      holder = f.read().decode(errors='replace').strip() or 'another process'
      f.close()
      if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
        raise WorkdirError(
          f'workdir {os.path.dirname(self.path)} is in use by another run ({holder}): '
          'wait for it to end, or use another --workdir'
        ) from None
      raise WorkdirError(f'cannot lock {self.path} ({e.strerror}): {what_to_do(e)}') from None
    try:
      with writing(self.path):
        f.seek(0)
        f.truncate()
        now = datetime.datetime.now().astimezone().isoformat(timespec='seconds')
        f.write(f'pid {os.getpid()} on {socket.gethostname()} since {now}\n'.encode())
    except WorkdirError:
      if new:  # leave the workdir as it was
        os.remove(self.path)
      fcntl.flock(f, fcntl.LOCK_UN)
      f.close()
      raise
    self._file = f
    return self

  def __exit__(self, *exc):
    fcntl.flock(self._file, fcntl.LOCK_UN)
    self._file.close()
    self._file = None


def write_json(path: str, obj):
  """Writes obj as JSON to path whole or not at all (a temporary file, then a rename)."""
  tmp = f'{path}.tmp{os.getpid()}'
  try:
    with writing(path), open(tmp, 'w') as f:
      json.dump(obj, f, indent=2, allow_nan=False)
      f.flush()
      os.fsync(f.fileno())
    with writing(path):
      os.replace(tmp, path)
  finally:
    if os.path.exists(tmp):  # a failed write leaves nothing half-written behind
      os.remove(tmp)


def read_config(workdir: str) -> dict | None:
  """WORKDIR/config.json, or None when there is none; a WorkdirError when it is not a config."""
  path = os.path.join(workdir, CONFIG_FILE)
  if not os.path.exists(path):
    return None
  try:
    with open(path) as f:
      config = json.load(f)
  except (OSError, ValueError) as e:
    raise WorkdirError(f'{path} is unreadable ({e}): move it away to start a new run there') from None
  if not isinstance(config, dict):
    raise WorkdirError(f'{path} holds {type(config).__name__}, not a config: move it away to start a new run there')
  return config


def keep_config(workdir: str, config: dict):
  """Writes config.json when it is missing or unreadable (the run's config is known from
  its checkpoint, or is new); a readable one is left as it is."""
  try:
    if read_config(workdir) is not None:
      return
  except WorkdirError as e:
    logging.warning('%s; rewritten from the checkpoint', str(e).split(': move it')[0])
  write_json(os.path.join(workdir, CONFIG_FILE), config)
