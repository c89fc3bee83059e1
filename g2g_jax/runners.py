"""How the loop runs its compiled programs: a runner per execution strategy, behind one interface.

`StepRunner` makes one jitted call per optimizer step on batches gathered on the host;
`ScanRunner` keeps the training set on the device and runs a chunk of steps per call
(lax.scan). Both compile every program ahead (train, eval, mask update) and time it, return
each chunk's metrics as host arrays [steps, seeds], and keep at most one program in flight:
XLA:CPU runs a program's collectives on a pool of threads, and programs queued behind one
another on several devices can take every thread while waiting for each other (the step
loop aborted in an all-reduce on 2 and 4 CPU devices).
"""

import functools
import time
from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from g2g_jax import input_pipeline, replicas
from g2g_jax.config import RunSpec
from g2g_jax.state import STREAMS


def evaluate_split(eval_fn, state, images, labels, batch_size: int, sharding=None) -> dict:
  """Loss and accuracy over a whole split with a compiled eval step, per seed (arrays [seeds])."""
  sums = []
  for batch in input_pipeline.eval_batches(images, labels, batch_size):
    batch = jax.device_put(batch, sharding) if sharding else batch
    jax.block_until_ready(sums[-1:])  # one program in flight
    sums.append(eval_fn(state, batch))
  total = jax.tree.map(lambda *v: np.atleast_1d(np.sum(np.stack(v).astype(np.float64), axis=0)), *jax.device_get(sums))
  return {'loss': total['loss'] / total['count'], 'accuracy': total['correct'] / total['count']}


class Steps(NamedTuple):
  """The pure functions a runner compiles (train.py's)."""

  train: Callable  # train_step(state, batch, **static) -> (state, metrics)
  eval: Callable  # eval_step(state, batch) -> sums
  grad_norm: Callable  # grad_norm(state, batch) -> the gradient's global norm
  update_masks: Callable  # update_masks(state, batches, rng, *, spec) -> (state, info)


def _no_implicit_transfers(method):
  """Runs a runner's method with JAX's transfer guard at 'disallow': on the loop's hot path every
  host-device transfer is an explicit device_put or device_get, and an accidental one fails."""

  @functools.wraps(method)
  def guarded(*args, **kwargs):
    with jax.transfer_guard('disallow'):
      return method(*args, **kwargs)

  return guarded


def _per_step(metrics: list) -> dict:
  """Per-step metric dicts (device arrays, [seeds] each or scalars) as host arrays [steps, seeds]."""
  fetched = jax.device_get(metrics)
  return {k: np.stack([np.atleast_1d(m[k]) for m in fetched]) for k in fetched[0]}


class Runner:
  """A run's compiled programs: `run_chunk(state, step, n)` trains n steps from `step` and
  returns (state, its metrics: host arrays [steps run, seeds]); `evaluate(state)` the test
  split; `grad_norm(state, step)` the gradient's norm; `rewire(state, step)` one mask update
  (state, info, seconds).
  `compile_seconds` holds each program's compile time."""

  def __init__(self, spec: RunSpec, mesh: Mesh, dataset, state, *, steps: 'Steps', should_stop):
    self.spec, self.dataset, self.should_stop = spec, dataset, should_stop
    self.seeds = spec.num_seeds
    self.replicated = NamedSharding(mesh, P())
    self.batch_sharding = NamedSharding(mesh, P('data'))  # one replica's batch
    lead_sharding = NamedSharding(mesh, P(None, 'data'))  # batches behind one leading axis
    self.train_sharding = lead_sharding if self.seeds > 1 else self.batch_sharding
    self.hebbian_sharding = NamedSharding(mesh, P(None, None, 'data')) if self.seeds > 1 else lead_sharding
    self.batches = input_pipeline.TrainBatches(
      dataset.train_images, dataset.train_labels, spec.batch_size, range(spec.seed, spec.seed + self.seeds)
    )
    self.compile_seconds = {}
    step_kw = dict(
      augment=spec.data.augment, crop_padding=spec.data.crop_padding, num_microbatches=spec.num_microbatches
    )
    self._compile_train(state, functools.partial(steps.train, **step_kw))
    test_batch = next(input_pipeline.eval_batches(dataset.test_images, dataset.test_labels, spec.eval_batch_size))
    self._eval = self._compile(
      'eval_step', steps.eval, state, jax.device_put(test_batch, self.batch_sharding), axes=(0, None)
    )
    self._grad_norm = self._compile(
      'grad_norm', steps.grad_norm, state, self.batches.device_batch(0, self.train_sharding)
    )
    self._rewire = None
    if spec.rewiring.enabled:
      update = functools.partial(steps.update_masks, spec=spec.rewiring)
      self._rewire_keys = replicas.over_seeds(jax.random.fold_in, self.seeds, in_axes=(0, None))(
        state.key, STREAMS['rewire']
      )
      self._step_keys = jax.jit(replicas.over_seeds(jax.random.fold_in, self.seeds, in_axes=(0, None)))
      k = spec.rewiring.hebbian_batches
      self._rewire = self._compile('update_masks', update, state, self._hebbian(k), self._rewire_keys, donate=True)

  def _compile(self, name, fn, *example_args, axes=0, donate=False):
    t0 = time.perf_counter()
    jitted = jax.jit(replicas.over_seeds(fn, self.seeds, axes), donate_argnums=0 if donate else ())
    compiled = jitted.lower(*example_args).compile()
    self.compile_seconds[name] = time.perf_counter() - t0
    return compiled

  def _hebbian(self, step: int):
    """The batches the Hebbian score reads at `step`: the latest ones trained on."""
    k = self.spec.rewiring.hebbian_batches
    return jax.device_put(self.batches.latest(max(step, k), k), self.hebbian_sharding)

  def _compile_train(self, state, step_fn):
    raise NotImplementedError

  def run_chunk(self, state, step: int, n: int):
    raise NotImplementedError

  def evaluate(self, state) -> dict:
    data = self.dataset
    return evaluate_split(
      self._eval, state, data.test_images, data.test_labels, self.spec.eval_batch_size, self.batch_sharding
    )

  def grad_norm(self, state, step: int) -> np.ndarray:
    """The global norm of the gradient on the batch step `step` trained on, per seed [seeds]."""
    batch = self.batches.device_batch(step - 1, self.train_sharding)
    return np.atleast_1d(jax.device_get(self._grad_norm(state, batch)))

  def _scalar(self, value: int):
    return jax.device_put(np.int32(value), self.replicated)

  @_no_implicit_transfers
  def rewire(self, state, step: int):
    """One mask update after step `step`: (state, info as host arrays, seconds it took alone)."""
    jax.block_until_ready(state)  # time the update alone, not the steps queued before it
    t0 = time.perf_counter()
    keys = self._step_keys(self._rewire_keys, self._scalar(step))
    state, info = self._rewire(state, self._hebbian(step), keys)
    info = jax.device_get(info)
    return state, info, time.perf_counter() - t0


class StepRunner(Runner):
  """One jitted call per step; each batch gathered on the host (only this process's rows)."""

  def _compile_train(self, state, step_fn):
    example = self.batches.device_batch(0, self.train_sharding)
    self._train = self._compile('train_step', step_fn, state, example, donate=True)

  @_no_implicit_transfers
  def run_chunk(self, state, step: int, n: int):
    metrics = []
    for i in range(n):
      # One program in flight, the stop check's collective included: two in flight can meet
      # in different orders on two processes and wait for each other for ever.
      jax.block_until_ready(metrics[-1:])
      if i and self.should_stop():  # a stop request ends the chunk at this step boundary
        break
      batch = self.batches.device_batch(step + i, self.train_sharding)
      state, m = self._train(state, batch)
      metrics.append(m)
    return state, _per_step(metrics)


def train_chunk(state, data, order, first, *, length, batch_size, batch_sharding, step_fn):
  """`length` train steps in one call, on the device-resident `data`: step j trains on the
  examples order[(first + j) * batch_size :][:batch_size]. Returns the state and per-step
  metrics [length]."""

  def body(state, j):
    idx = jax.lax.dynamic_slice(order, ((first + j) * batch_size,), (batch_size,))
    batch = jax.tree.map(lambda a: jnp.take(a, idx, axis=0), data)
    batch = jax.lax.with_sharding_constraint(batch, batch_sharding)
    return step_fn(state, batch)

  return jax.lax.scan(body, state, jnp.arange(length))


class ScanRunner(Runner):
  """Chunks of steps in one call each (lax.scan) on the device-resident training set. A chunk is
  the schedule's full chunk; chunks cut short (by a mask update, the halt step, or epochs of a
  length that no chunk divides) run as single steps, a second program compiled only when needed."""

  def _compile_train(self, state, step_fn):
    spe = self.spec.steps_per_epoch
    self._chunk_steps = self.spec.schedule().chunk_steps
    self._data = jax.device_put(
      {'image': self.dataset.train_images, 'label': self.dataset.train_labels}, self.replicated
    )
    kw = dict(batch_size=self.spec.batch_size, batch_sharding=self.batch_sharding, step_fn=step_fn)
    example = (state, self._data, jax.device_put(np.zeros_like(self.batches.orders(0), np.int32), self.replicated), 0)
    axes = (0, None, 0, None)
    chunk = functools.partial(train_chunk, length=self._chunk_steps, **kw)
    self._chunk = self._compile('train_chunk', chunk, *example, axes=axes, donate=True)
    self._single = None
    if any(n != self._chunk_steps for n in self.spec.schedule().chunks(0)):
      self._single = self._compile(
        'train_chunk_1', functools.partial(train_chunk, length=1, **kw), *example, axes=axes, donate=True
      )
    self._orders, self._spe = {}, spe

  @_no_implicit_transfers
  def run_chunk(self, state, step: int, n: int):
    epoch, position = divmod(step, self._spe)
    if epoch not in self._orders:  # the epoch's orders: 4 bytes per example and seed, sent once per epoch
      self._orders = {epoch: jax.device_put(self.batches.orders(epoch).astype(np.int32), self.replicated)}
    order = self._orders[epoch]
    if n == self._chunk_steps:
      state, metrics = self._chunk(state, self._data, order, self._scalar(position))
      return state, {
        k: np.reshape(v.T, (n, -1)) for k, v in jax.device_get(metrics).items()
      }  # [(seeds,) n] -> [n, seeds]
    parts = []
    for i in range(n):
      jax.block_until_ready(parts[-1:])  # one program in flight
      state, m = self._single(state, self._data, order, self._scalar(position + i))
      parts.append(m)
    fetched = jax.device_get(parts)
    return state, {k: np.concatenate([np.reshape(np.asarray(m[k]).T, (1, -1)) for m in fetched]) for k in fetched[0]}


RUNNERS = {'steps': StepRunner, 'scan': ScanRunner}
