"""Where a training step's time goes on this backend: step times and a profiler trace.

python experiments/bench/profile_steps.py [--loops=scan,scan_cond,steps] [--chunks=4]

Runs log_every_steps (50) steps per call of the default Fashion-MNIST model (random data
of its shapes) three ways:
  scan       the training loop's scanned chunk (train.train_chunk: a fixed number of
             steps, no branch);
  scan_cond  the loop's earlier chunk: the same scan with a lax.cond per step that skips
             steps past the chunk's end, so that one program serves every chunk size.
             It is kept here to price that branch on a GPU;
  steps      one jitted step per call, the batch gathered and sent by the host.
Prints, for each: ms per step untimed by the profiler, then a jax.profiler trace of
`--chunks` calls summarized per step: for each traced process (a GPU's streams, the
host's threads) the events, their summed duration and the slowest kinds. They say
whether a step is bound by kernel time, by launches or by host synchronization. XLA:GPU
turns off command buffers (CUDA graphs) while profiling, so the untimed figure is the
one to compare. The trace folders are kept (--trace_dir) for TensorBoard or Perfetto.
"""

import collections
import functools
import os
import sys
import tempfile
import time

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import traces  # noqa: E402

from configs import fashion_mnist  # noqa: E402
from g2g_jax import train  # noqa: E402
from g2g_jax.config import parse_config  # noqa: E402

_LOOPS = flags.DEFINE_list('loops', ['scan', 'scan_cond', 'steps'], 'Which of scan, scan_cond, steps.')
_CHUNKS = flags.DEFINE_integer('chunks', 4, 'Calls of log_every_steps steps to time, then to trace.')
_ROW = flags.DEFINE_string('config_row', 'g2g', 'Row of configs/fashion_mnist.py.')
_TILES = flags.DEFINE_bool('tiles', False, 'connectivity.inter = tiles.')
_TOP = flags.DEFINE_integer('top', 12, 'Slowest event kinds to list per process.')
_TRACE_DIR = flags.DEFINE_string('trace_dir', '', "Where traces go; '' = a temporary folder.")


def _runner(loop: str, config):
  """(state, call) where call(state) runs log_every_steps steps and returns (state, metrics)."""
  spec = parse_config(config)
  mesh = train.make_mesh(1)
  replicated, batch_sharding = NamedSharding(mesh, P()), NamedSharding(mesh, P('data'))
  n, bs, length = spec.data.info.num_train, spec.batch_size, spec.log_every_steps
  rng = np.random.default_rng(0)
  images = rng.integers(0, 256, (n, *spec.data.info.image_shape), dtype=np.uint8)
  labels = rng.integers(0, spec.model.num_classes, n).astype(np.int32)
  state = jax.device_put(train.make_train_state(config), replicated)
  step_fn = functools.partial(train.train_step, augment=spec.data.augment, crop_padding=spec.data.crop_padding)
  if loop == 'scan':
    data = jax.device_put({'image': images, 'label': labels}, replicated)
    perm = jax.device_put(rng.permutation(n).astype(np.int32), replicated)
    chunk = functools.partial(
      train.train_chunk,
      length=length,
      batch_size=bs,
      batch_sharding=batch_sharding,
      augment=spec.data.augment,
      crop_padding=spec.data.crop_padding,
    )
    fn = jax.jit(chunk, donate_argnums=0)
    return state, lambda st: fn(st, data, perm, 0)
  if loop == 'scan_cond':
    data = jax.device_put({'image': images, 'label': labels}, replicated)
    perm = jax.device_put(rng.permutation(n).astype(np.int32), replicated)

    def with_cond(st, data, perm, first, num_steps):
      def body(st, j):
        def run(st):
          idx = jax.lax.dynamic_slice(perm, ((first + j) * bs,), (bs,))
          batch = jax.tree.map(lambda a: jnp.take(a, idx, axis=0), data)
          return step_fn(st, jax.lax.with_sharding_constraint(batch, batch_sharding))

        def skip(st):
          return st, {'loss': jnp.zeros((), jnp.float32), 'accuracy': jnp.zeros((), jnp.float32)}

        return jax.lax.cond(j < num_steps, run, skip, st)

      return jax.lax.scan(body, st, jnp.arange(length))

    fn = jax.jit(with_cond, donate_argnums=0)
    return state, lambda st: fn(st, data, perm, 0, length)
  fn = jax.jit(step_fn, donate_argnums=0)
  batches = [{'image': images[i * bs : (i + 1) * bs], 'label': labels[i * bs : (i + 1) * bs]} for i in range(length)]

  def call(st):
    ms = []
    for b in batches:  # the host gathers and sends each batch, as loop=steps does
      st, m = fn(st, jax.device_put(b, batch_sharding))
      ms.append(m)
    return st, jax.tree.map(lambda *x: jnp.stack(x), *ms)

  return state, call


def _summarize(trace_dir: str, steps: int, top: int):
  events, names = traces.complete_events(trace_dir)
  by_pid = collections.defaultdict(list)
  for e in events:
    by_pid[e['pid']].append(e)
  for pid, evs in sorted(by_pid.items(), key=lambda kv: names.get(kv[0], '')):
    total = collections.Counter()
    count = collections.Counter()
    for e in evs:
      total[e['name']] += e['dur']
      count[e['name']] += 1
    print(
      f'  {names.get(pid, pid)}: {len(evs) / steps:.1f} events per step, '
      f'{sum(total.values()) / steps / 1e3:.3f} ms summed per step'
    )
    for name, dur in total.most_common(top):
      print(f'    {dur / steps / 1e3:8.4f} ms {count[name] / steps:6.2f}x  {name[:100]}')


def main(argv):
  del argv
  config = fashion_mnist.get_config(_ROW.value)
  if _TILES.value:
    config.connectivity.inter = 'tiles'
  print('JAX', jax.__version__, jax.devices())
  root = _TRACE_DIR.value or tempfile.mkdtemp(prefix='g2g-profile-')
  for loop in _LOOPS.value:
    if loop not in ('scan', 'scan_cond', 'steps'):
      raise app.UsageError(f'--loops: {loop!r} is not one of scan, scan_cond, steps')
    state, call = _runner(loop, config)
    t0 = time.perf_counter()
    state, m = call(state)
    jax.block_until_ready(m)
    compile_s = time.perf_counter() - t0
    state, m = call(state)  # one more untraced call: nothing left to warm up
    jax.block_until_ready(m)
    steps = _CHUNKS.value * config.log_every_steps
    t0 = time.perf_counter()
    for _ in range(_CHUNKS.value):
      state, m = call(state)
    jax.block_until_ready(m)
    untraced = (time.perf_counter() - t0) / steps
    out = os.path.join(root, loop)
    with jax.profiler.trace(out):
      for _ in range(_CHUNKS.value):
        state, m = call(state)
      jax.block_until_ready(m)
    print(
      f'\nloop={loop}: {untraced * 1e3:.3f} ms per step untraced '
      f'(first call, compiling included: {compile_s:.2f} s); trace of {steps} steps:'
    )
    _summarize(out, steps, _TOP.value)
  print(f'\ntraces: {root}')


if __name__ == '__main__':
  app.run(main)
