"""Command line: python -m g2g_jax.main --config=configs/cifar100.py --workdir=DIR.

Fields are overridden with --config.section.field=value; an unknown field is an error.
A rerun with the same workdir resumes from its last checkpoint.

On many hosts, run the same command once per host: JAX finds a Cloud TPU pod slice, a
SLURM job or an Open MPI job itself; elsewhere give --coordinator_address, --num_processes
and --process_id. The workdir must be on a filesystem every host shares.

A user's mistake or a fault is one line on stderr, `error: ...`, and a fixed exit status:
  2   usage and config errors (flags, the config file, a field's value, another run's workdir)
  3   data and workdir errors (a dataset not found or broken; a workdir in use, unwritable,
      unreadable, or a file in it that cannot be written: a full disk, say)
  4   the run diverged (a non-finite loss); its last good checkpoint is intact
  75  stopped by SIGTERM (EX_TEMPFAIL: requeue and rerun to resume)
  129 stopped by SIGHUP (the terminal closed); rerun to resume
  130 stopped by Ctrl-C (SIGINT); rerun to resume
During training a signal saves a checkpoint at the next step boundary first; before it
(loading, compiling) the process ends at once, and nothing of the run is half written.
"""

from g2g_jax import interrupts

if __name__ == '__main__':
  interrupts.end_on_signals()  # before the slow imports: from here on a signal ends in one line

import logging as py_logging  # noqa: E402
import os  # noqa: E402
import sys  # noqa: E402
import threading  # noqa: E402

import jax  # noqa: E402
import ml_collections  # noqa: E402
from absl import app, flags, logging  # noqa: E402
from ml_collections import config_flags  # noqa: E402

from g2g_jax import hosts, train  # noqa: E402
from g2g_jax.config import ConfigError  # noqa: E402
from g2g_jax.data import DataError, DataNotFoundError  # noqa: E402
from g2g_jax.interrupts import Stopped  # noqa: E402
from g2g_jax.workdir import WorkdirError, check_path  # noqa: E402

_CONFIG = config_flags.DEFINE_config_file(
  'config', None, 'Path to a config file (configs/*.py[:row]).', lock_config=True
)
_WORKDIR = flags.DEFINE_string('workdir', None, 'Folder for checkpoints and metrics; a rerun resumes there.')
_COORDINATOR = flags.DEFINE_string(
  'coordinator_address', '', 'host:port of process 0, for a multi-process run the environment does not describe.'
)
_NUM_PROCESSES = flags.DEFINE_integer(
  'num_processes', 0, 'Processes of a multi-process run (with --coordinator_address).'
)
_PROCESS_ID = flags.DEFINE_integer('process_id', -1, "This process's index, 0 .. num_processes - 1.")
_START_OVER = flags.DEFINE_bool(
  'start_over',
  False,
  'Train a workdir whose records have no checkpoint to resume from again from step 0; its earlier records '
  'are moved to WORKDIR/earlier/.',
)
flags.mark_flags_as_required(['config', 'workdir'])

EXIT_CONFIG, EXIT_DATA, EXIT_DIVERGED = 2, 3, 4


def fail(message: str, status: int):
  print(f'error: {message}', file=sys.stderr, flush=True)
  sys.exit(status)


class _NoTracebacks(py_logging.Filter):
  """Libraries that log a background failure (orbax, asyncio) keep their first line; the
  traceback stays out of the terminal, where the run's own one-line error explains it."""

  def filter(self, record) -> bool:
    if record.exc_info and record.levelno >= py_logging.WARNING:
      record.exc_info, record.exc_text = None, None
      record.msg, record.args = str(record.getMessage()).split('\n')[0][:300], ()
    return True


def _quiet_background_errors():
  """No traceback of a background thread or of a library's log reaches the terminal."""
  for logger in (py_logging.getLogger(), logging.get_absl_logger(), py_logging.getLogger('asyncio')):
    logger.addFilter(_NoTracebacks())
  threading.excepthook = lambda args: logging.warning(
    'a background thread (%s) failed: %s: %s',
    args.thread.name if args.thread else '?',
    args.exc_type.__name__,
    args.exc_value,
  )
  sys.unraisablehook = _ignored_once


_IGNORED = set()


def _ignored_once(unraisable):
  """A failure Python ignores (an exit hook's, say TensorBoard's last flush): one line the first time."""
  line = f'warning: ignored {type(unraisable.exc_value).__name__}: {unraisable.exc_value}'
  if line not in _IGNORED:  # logging may be gone at exit: print
    _IGNORED.add(line)
    print(line, file=sys.stderr, flush=True)


def parse_flags(argv: list[str]) -> list[str]:
  """absl's parser, with a one-line error for an unknown field or a bad value."""
  try:
    return flags.FLAGS(argv)
  except (AttributeError, KeyError) as e:  # config_flags on an override of a missing field
    key = str(e).strip('"\'')
    named = [a.split('=')[0] for a in argv if a.startswith('--config.') and f'.{key}' in a.split('=')[0]]
    where = named[0] if named else 'a --config override'
    fail(f'{where}: unknown config field {key!r} (python -m g2g_jax.config lists every field)', EXIT_CONFIG)
  except flags.Error as e:
    lines = [line.strip() for line in str(e).splitlines() if line.strip()]
    # config_flags puts the config file's own traceback in the message: its last line says what failed
    fail(lines[0] if len(lines) < 3 else f'{lines[0].split(": ")[0]}: {lines[-1]}', EXIT_CONFIG)
  except Exception as e:  # noqa: BLE001 (the config file is the user's code: it may fail in any way)
    fail(f'--config: {_why(e)}', EXIT_CONFIG)


def _why(e: BaseException) -> str:
  """One line for an exception: its own, or its cause's (config_flags wraps the file's error)."""
  while e.__cause__ is not None:
    e = e.__cause__
  lines = [line.strip() for line in str(e).strip().splitlines() if line.strip()]
  where = f' (line {e.lineno})' if isinstance(e, SyntaxError) and e.lineno else ''
  return f'{type(e).__name__}{where}: ' + ' '.join(lines)[:300]


def load_config() -> ml_collections.ConfigDict:
  """The --config file's config, or a one-line error naming the file."""
  path = flags.FLAGS['config'].serialize().split('=', 1)[-1]
  if not os.path.isfile(path.split(':')[0]):
    fail(f'--config={path}: no such file', EXIT_CONFIG)
  try:
    config = _CONFIG.value
  except Exception as e:  # noqa: BLE001 (a missing file, a syntax error, get_config raising)
    fail(f'--config={path}: {_why(e)}', EXIT_CONFIG)
  if not isinstance(config, ml_collections.ConfigDict):
    fail(
      f'--config={path}: get_config() returned {type(config).__name__}, not an ml_collections.ConfigDict', EXIT_CONFIG
    )
  return config


def main(argv):
  interrupts.end_on_signals()
  _quiet_background_errors()
  if len(argv) > 1:
    fail(f'unexpected arguments: {" ".join(argv[1:])}', EXIT_CONFIG)
  config = load_config()
  try:
    workdir = check_path(_WORKDIR.value)
  except WorkdirError as e:
    fail(str(e), EXIT_DATA)
  if _COORDINATOR.value and (_NUM_PROCESSES.value < 1 or not 0 <= _PROCESS_ID.value < _NUM_PROCESSES.value):
    fail(
      f'--coordinator_address needs --num_processes >= 1 and --process_id in [0, num_processes) '
      f'(got {_NUM_PROCESSES.value} and {_PROCESS_ID.value})',
      EXIT_CONFIG,
    )
  hosts.initialize(_COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value)
  logging.info('JAX %s on %s: %s', jax.__version__, jax.default_backend(), jax.devices())
  try:
    train.train_and_evaluate(config, workdir, start_over=_START_OVER.value)
  except ConfigError as e:
    fail(str(e), EXIT_CONFIG)
  except (DataNotFoundError, DataError, WorkdirError) as e:
    fail(str(e), EXIT_DATA)
  except FloatingPointError as e:
    fail(str(e), EXIT_DIVERGED)
  except Stopped as e:
    fail(str(e), interrupts.EXIT_STATUS[e.signum])
  except OSError as e:  # a file the run writes, and none of the above named it
    where = f'{e.filename}: ' if e.filename else ''
    fail(
      f'{where}{e.strerror or e}: fix the cause and rerun; a rerun resumes from the last checkpoint in {workdir}',
      EXIT_DATA,
    )


if __name__ == '__main__':
  jax.config.config_with_absl()  # JAX's own options as flags: --jax_compilation_cache_dir=DIR, ...
  app.run(main, flags_parser=parse_flags)
