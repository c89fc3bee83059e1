"""Where the step loop's time goes on this backend: the compiled step against the host's work.

  python experiments/bench/profile_loop.py [--row=g2g] [--tiles] [--steps=200]

Builds the default Fashion-MNIST model (random data of its shapes) as train_and_evaluate
does and times, per step:
  compiled step   the jitted train step back to back on one device-resident batch
                  (no host work between steps): what the hardware needs;
  loop step       the loop's own per-step work as train_and_evaluate does it (host batch,
                  placement, dispatch; metrics stacked per chunk and read at each sync);
and the loop's host parts alone, each timed on its own with the device idle:
  indices         this step's example indices (the epoch's order, sliced);
  gather          images[idx], labels[idx] on the host;
  place           the gathered batch onto the devices (device_batch: gather + transfer);
  dispatch        the train step's call returning (the state's buffers handed over);
  stack           the chunk's per-step metrics stacked into arrays;
  sync            reading the chunk's metrics back and summing them (EpochSums.sync).
Prints a table and one JSON line.
"""

import functools
import json
import os
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
from configs import fashion_mnist  # noqa: E402
from g2g_jax import input_pipeline, metrics, train  # noqa: E402
from g2g_jax.config import parse_config  # noqa: E402

_ROW = flags.DEFINE_string('row', 'g2g', 'Row of configs/fashion_mnist.py.')
_TILES = flags.DEFINE_bool('tiles', False, 'connectivity.inter = tiles.')
_STEPS = flags.DEFINE_integer('steps', 200, 'Steps per timing.')
_ROUNDS = flags.DEFINE_integer('rounds', 5, 'Rounds of the compiled step and the loop, in turns (median).')


def timed(fn, n):
  t0 = time.perf_counter()
  for i in range(n):
    fn(i)
  return (time.perf_counter() - t0) / n


def main(argv):
  del argv
  config = fashion_mnist.get_config(_ROW.value)
  if _TILES.value:
    config.connectivity.inter = 'tiles'
  config.data.source = 'synthetic'
  config.data.synthetic_num_train = 60000
  spec = parse_config(config)
  mesh = train.make_mesh(1)
  sharding = NamedSharding(mesh, P('data'))
  rng = np.random.default_rng(0)
  images = rng.integers(0, 256, (60000, 28, 28, 1), dtype=np.uint8)
  labels = rng.integers(0, 10, 60000).astype(np.int32)
  batches = input_pipeline.TrainBatches(images, labels, spec.batch_size, [spec.seed])
  state = jax.device_put(train.make_train_state(config), NamedSharding(mesh, P()))
  step_fn = functools.partial(train.train_step, augment=spec.data.augment, crop_padding=spec.data.crop_padding)
  fn = jax.jit(step_fn, donate_argnums=0).lower(state, batches.device_batch(0, sharding)).compile()
  n, chunk = _STEPS.value, spec.log_every_steps
  box = {'state': state}

  fixed = batches.device_batch(0, sharding)
  box['state'], m = fn(box['state'], fixed)
  jax.block_until_ready(m)

  def compiled(steps):
    for _ in range(steps):
      box['state'], box['m'] = fn(box['state'], fixed)
    jax.block_until_ready(box['m'])

  def loop(steps):  # as train_and_evaluate's run_chunk + sync, chunk by chunk
    for first in range(0, steps, chunk):
      ms = []
      for i in range(first, first + chunk):
        box['state'], m = fn(box['state'], batches.device_batch(i, sharding))
        ms.append(m)
      sums = metrics.EpochSums(1)
      sums.add(jax.tree.map(lambda *xs: jnp.stack(xs), *ms))
      sums.sync(first + chunk, spec.batch_size)

  steps = max(chunk, n - n % chunk)
  rounds = {'compiled': [], 'loop': []}
  for _ in range(_ROUNDS.value):  # in turns, so that a busy spell of the host hits both
    for name, fn_ in (('compiled', compiled), ('loop', loop)):
      t0 = time.perf_counter()
      fn_(steps)
      rounds[name].append((time.perf_counter() - t0) / steps)
  t_compiled, t_loop = (float(np.median(rounds[k])) for k in ('compiled', 'loop'))

  parts = {
    'indices': timed(lambda i: batches.indices(i), n),
    'gather': timed(lambda i: batches.batch(i), n),
    'place': timed(lambda i: jax.block_until_ready(batches.device_batch(i, sharding)), n),
  }

  def dispatch(i):
    t = time.perf_counter()
    box['state'], box['m'] = fn(box['state'], fixed)
    box['dispatch'] = box.get('dispatch', 0.0) + time.perf_counter() - t
    jax.block_until_ready(box['m'])

  timed(dispatch, n)
  parts['dispatch'] = box['dispatch'] / n
  ms = [box['m']] * chunk
  parts['stack (per step)'] = (
    timed(lambda i: jax.block_until_ready(jax.tree.map(lambda *x: jnp.stack(x), *ms)), 20) / chunk
  )
  stacked = jax.tree.map(lambda *x: jnp.stack(x), *ms)

  def sync(i):
    sums = metrics.EpochSums(1)
    sums.add(stacked)
    sums.sync(chunk, spec.batch_size)

  parts['sync (per step)'] = timed(sync, 20) / chunk
  what = f'{config.connectivity.kind} {spec.connectivity.inter}, batch {spec.batch_size}'
  print(f'JAX {jax.__version__} {jax.devices()[0]}; {what}')
  print(f'{"compiled step":>18} {1e3 * t_compiled:8.3f} ms')
  print(f'{"loop step":>18} {1e3 * t_loop:8.3f} ms  (+{1e3 * (t_loop - t_compiled):.3f} ms over the compiled step)')
  for name, t in parts.items():
    print(f'{name:>18} {1e3 * t:8.3f} ms')
  out = {'compiled_ms': 1e3 * t_compiled, 'loop_ms': 1e3 * t_loop, **{k: 1e3 * v for k, v in parts.items()}}
  print(json.dumps({**out, 'rounds_ms': {k: [1e3 * r for r in v] for k, v in rounds.items()}}))


if __name__ == '__main__':
  app.run(main)
