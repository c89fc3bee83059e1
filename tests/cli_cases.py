"""Runs many `python -m g2g_jax.main` command lines for the price of one: imports once, then
forks a fresh child per command line (the parent never starts a JAX backend).

  python tests/cli_cases.py CASES_JSON   (a list of argument lists; prints one JSON list of
                                          {'code': exit status, 'output': stdout + stderr})
"""

import json
import os
import signal
import sys
import tempfile

import jax
from absl import app

from g2g_jax import main


def run(argv: list[str], timeout_s: int = 120) -> dict:
  with tempfile.TemporaryFile() as out:
    pid = os.fork()
    if pid == 0:  # the child: the command line, as `python -m g2g_jax.main` runs it
      os.dup2(out.fileno(), 1)
      os.dup2(out.fileno(), 2)
      signal.alarm(timeout_s)
      code = 0
      sys.argv = ['g2g_jax.main', *argv]  # config_flags finds the --config.X overrides there
      try:
        app.run(main.main, flags_parser=main.parse_flags)
      except SystemExit as e:
        code = e.code if isinstance(e.code, int) else int(e.code is not None)
      finally:
        sys.stdout.flush()
        sys.stderr.flush()
      os._exit(code)
    _, status = os.waitpid(pid, 0)
    out.seek(0)
    return {'code': os.waitstatus_to_exitcode(status), 'output': out.read().decode(errors='replace')}


if __name__ == '__main__':
  jax.config.config_with_absl()
  print(json.dumps([run(argv) for argv in json.loads(sys.argv[1])]))
