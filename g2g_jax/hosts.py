"""One run over many processes (one per host): jax.distributed set-up, which process writes,
and how the processes agree.

Every process runs the same program on the same data and reaches the same decisions from
the same numbers; what only one process can see (a lock, a signal, a file it failed to
write) is shared with the others before anyone acts on it. One process changes nothing
here.
"""

import os
import secrets

import jax
import numpy as np
from absl import logging
from jax.experimental import multihost_utils

from g2g_jax.workdir import WorkdirError

# Environment variables by which JAX's own cluster detection finds a multi-process job.
CLUSTER_VARIABLES = {
  'SLURM_NTASKS': 'SLURM',
  'OMPI_COMM_WORLD_SIZE': 'Open MPI',
  'TPU_WORKER_HOSTNAMES': 'a Cloud TPU pod slice',
}


def detected_cluster() -> str | None:
  """The multi-process job this process runs in, as the environment says, or None."""
  for variable, name in CLUSTER_VARIABLES.items():
    value = os.environ.get(variable, '')
    processes = len(value.split(',')) if variable == 'TPU_WORKER_HOSTNAMES' else int(value or 1)
    if processes > 1:
      return name
  return None


def initialize(coordinator_address: str = '', num_processes: int = 0, process_id: int = -1):
  """jax.distributed.initialize, from the arguments when given, else from the environment
  when it describes a multi-process job; nothing for a single process."""
  if coordinator_address:
    jax.distributed.initialize(coordinator_address, num_processes or None, None if process_id < 0 else process_id)
  elif detected_cluster():
    logging.info('multi-process job: %s', detected_cluster())
    jax.distributed.initialize()
  else:
    return
  logging.info('process %d of %d; devices: %d local, %d in all', *process_summary())
  if jax.default_backend() == 'cpu' and jax.config.jax_compilation_cache_dir:
    # JAX 0.12: a multi-process CPU program loaded from the persistent cache hangs in its first collective
    jax.config.update('jax_enable_compilation_cache', False)
    logging.warning('multi-process run on CPUs: the persistent compilation cache is off (programs compile afresh)')


def process_summary() -> tuple[int, int, int, int]:
  return jax.process_index(), jax.process_count(), jax.local_device_count(), jax.device_count()


def is_primary() -> bool:
  """Whether this process writes the run's files (metrics, TensorBoard, config.json)."""
  return jax.process_index() == 0


def barrier(name: str):
  if jax.process_count() > 1:
    multihost_utils.sync_global_devices(name)


def any_process(flag: bool) -> bool:
  """Whether flag is true on some process (each process's own flag: a signal, say)."""
  if jax.process_count() == 1:
    return bool(flag)
  return bool(np.any(multihost_utils.process_allgather(np.asarray(flag, np.int32))))


def on_primary(fn, what: str):
  """fn() on process 0 alone; when it raises, every process raises (the others a WorkdirError
  saying `what` failed on process 0), so no process waits for one that gave up."""
  error = None
  if is_primary():
    try:
      fn()
    except Exception as e:  # noqa: BLE001 (re-raised below, on every process)
      error = e
  if any_process(error is not None):
    raise error if error is not None else WorkdirError(f'{what} failed on process 0 (its log says why)')


def check_shared(workdir: str):
  """A WorkdirError unless every process sees the files process 0 writes in the workdir."""
  if jax.process_count() == 1:
    return
  token = int(multihost_utils.broadcast_one_to_all(np.asarray(secrets.randbits(31), np.int32)))
  path = os.path.join(workdir, f'.shared_check_{token}')
  if is_primary():
    os.makedirs(workdir, exist_ok=True)
    with open(path, 'w'):
      pass
  barrier('check_shared: written')
  missing = not os.path.exists(path)
  blind = any_process(missing)
  barrier('check_shared: seen')
  if is_primary():
    os.remove(path)
  if blind:
    raise WorkdirError(
      f'workdir {workdir} is not on a filesystem every process shares (process {jax.process_index()} '
      f'{"cannot" if missing else "can"} see what process 0 wrote): put it on a shared filesystem'
    )
