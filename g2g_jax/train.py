"""make_train_state, the pure train / eval steps, and the train_and_evaluate loop.

The loop is the one place that jits, schedules, evaluates, logs and checkpoints.
Masks are applied here, never in the model: gradients are masked before the optimizer
and params re-masked after each update, so a pruned weight is exactly 0 at all times.
"""

import dataclasses
import functools
import json
import os
import time
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from absl import logging
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from g2g_jax import checkpoint as ckpt_lib
from g2g_jax import connectivity as conn
from g2g_jax import data as data_lib
from g2g_jax import metrics as metrics_lib
from g2g_jax import optim, rewiring, tiles, xla_cpu
from g2g_jax.experiment import ConfigError, Experiment, config_differences, parse_config
from g2g_jax.state import TrainState, apply_masks

_SHUFFLE_STREAM = 3
CONFIG_FILE = 'config.json'


def compiler_options(config_or_exp) -> dict[str, str] | None:
  """The XLA options config.cpu_dots asks for on this backend: pass them to every jax.jit of
  the steps (None: XLA's defaults). See g2g_jax/xla_cpu.py."""
  exp = _experiment(config_or_exp)
  return xla_cpu.compiler_options(exp.cpu_dots, tiled=exp.connectivity.inter == 'tiles')


def make_mesh(num_devices: int = 0) -> Mesh:
  """A 1-D mesh over the first `num_devices` devices (0 = all), axis 'data'."""
  devices = jax.devices()[: num_devices or None]
  return Mesh(np.array(devices), ('data',))


def _experiment(config) -> Experiment:
  return config if isinstance(config, Experiment) else parse_config(config, jax.device_count())


def make_train_state(
  config: ml_collections.ConfigDict | Experiment,
  rng: jax.Array | None = None,
  *,
  num_train_examples: int | None = None,
) -> TrainState:
  """Builds params (jitted init), masks, masked and rescaled params, and optimizer state.

  Args:
    config: a config (validated here) or an already parsed Experiment.
    rng: PRNG key for the weights and the per-step keys; default PRNGKey(config.seed).
      Groups and masks always come from config.seed.
    num_train_examples: sets the steps of the learning-rate schedule; default the
      dataset's standard training-set size.
  """
  exp = _experiment(config)
  rng = jax.random.PRNGKey(exp.seed) if rng is None else rng
  k_init, k_run = jax.random.split(rng)
  num_train = num_train_examples or exp.data.info.num_train
  total_steps = (num_train // exp.batch_size) * exp.num_epochs
  dummy = jnp.zeros((1, *exp.data.info.image_shape), jnp.float32)
  variables = jax.jit(exp.model.init)(k_init, dummy)
  params, layout = variables['params'], variables.get('layout')
  if layout is None:
    masks = conn.make_masks(params, exp.connectivity, exp.seed)
  else:
    masks, layout = tiles.make_masks_and_layout(params, layout, exp.connectivity, exp.seed)

  def rescale(p, m):
    if m is None:
      return p
    return jnp.asarray((tiles.rescale_init if p.ndim == 4 else conn.rescale_init)(np.asarray(p), m))

  params = jax.tree.map(rescale, params, masks)
  masks = jax.tree.map(lambda m: None if m is None else jnp.asarray(m), masks, is_leaf=lambda x: x is None)
  return TrainState.create(
    apply_fn=exp.model.apply,
    params=params,
    tx=optim.make_optimizer(exp.optim, total_steps),
    masks=masks,
    key=k_run,
    last_grown=jax.tree.map(lambda m: None if m is None else jnp.zeros_like(m), masks, is_leaf=lambda x: x is None),
    layout=layout,
    groups=jax.tree.map(jnp.asarray, conn.make_groups(params, exp.connectivity, exp.seed)),
  )


def loss_and_logits(params, state, images, labels):
  logits, _ = state.apply_fn(state.variables(params), images)
  return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean(), logits


def train_step(state: TrainState, batch: dict, *, augment: str, crop_padding: int):
  """One optimizer step on a batch of uint8 images. Pure; jitted once by the loop."""
  key = jax.random.fold_in(state.key, state.step)
  images = data_lib.preprocess(key, batch['image'], augment, crop_padding)
  grad_fn = jax.value_and_grad(loss_and_logits, has_aux=True)
  (loss, logits), grads = grad_fn(state.params, state, images, batch['label'])
  grads = apply_masks(grads, state.masks)
  updates, opt_state = state.tx.update(grads, state.opt_state, state.params)
  params = apply_masks(optax.apply_updates(state.params, updates), state.masks)
  state = state.replace(step=state.step + 1, params=params, opt_state=opt_state)
  accuracy = jnp.mean(jnp.argmax(logits, -1) == batch['label'])
  return state, {'loss': loss, 'accuracy': accuracy}


def eval_step(state: TrainState, batch: dict):
  """Sums of loss and correct predictions over the examples with weight 1."""
  images = data_lib.to_float(batch['image'])
  logits, _ = state.apply_fn(state.variables(), images)
  losses = optax.softmax_cross_entropy_with_integer_labels(logits, batch['label'])
  correct = jnp.argmax(logits, -1) == batch['label']
  w = batch['weight']
  return {'loss': jnp.sum(losses * w), 'correct': jnp.sum(correct * w), 'count': jnp.sum(w)}


def eval_batches(images, labels, batch_size: int):
  """A split in host batches of batch_size examples; the last is padded with weight 0."""
  for start in range(0, len(images), batch_size):
    x, y = images[start : start + batch_size], labels[start : start + batch_size]
    pad = batch_size - len(x)
    weight = np.concatenate([np.ones(len(x), np.float32), np.zeros(pad, np.float32)])
    if pad:
      x = np.concatenate([x, np.zeros((pad, *x.shape[1:]), x.dtype)])
      y = np.concatenate([y, np.zeros(pad, y.dtype)])
    yield {'image': x, 'label': y, 'weight': weight}


def evaluate(eval_fn, state, images, labels, batch_size: int, sharding) -> dict:
  """Loss and accuracy over a whole split (eval_batches).

  With a vmapped eval_fn (seed-stacked states) the results are arrays over seeds.
  """
  sums = [eval_fn(state, jax.device_put(b, sharding)) for b in eval_batches(images, labels, batch_size)]
  total = jax.tree.map(lambda *v: np.atleast_1d(np.sum(np.stack(v).astype(np.float64), axis=0)), *jax.device_get(sums))
  return {'loss': total['loss'] / total['count'], 'accuracy': total['correct'] / total['count']}


def epoch_permutation(seed: int, epoch: int, n: int) -> np.ndarray:
  return np.random.default_rng([seed, _SHUFFLE_STREAM, epoch]).permutation(n)


class _EpochSums:
  """Running sums of the current epoch's training metrics per seed, synced every few steps."""

  def __init__(self, num_seeds: int, loss=None, correct=None, count=0, seconds=0.0):
    self.loss = np.zeros(num_seeds) if loss is None else np.asarray(loss, np.float64)
    self.correct = np.zeros(num_seeds) if correct is None else np.asarray(correct, np.float64)
    self.count, self.seconds = count, seconds
    self._pending = []

  def add(self, metrics: dict):
    """Metrics of consecutive steps, each value [num_steps, num_seeds] (device arrays)."""
    self._pending.append(metrics)

  def sync(self, last_step: int, batch_size: int, workdir: str, latest_checkpoint):
    """Fetches pending metrics; a non-finite loss stops the run, naming its step (and seed)
    and the last good checkpoint (latest_checkpoint(): its step or None)."""
    fetched = jax.device_get(self._pending)
    losses = np.concatenate([np.reshape(m['loss'], (len(m['loss']), -1)) for m in fetched])  # [steps, seeds]
    accs = np.concatenate([np.reshape(m['accuracy'], (len(m['accuracy']), -1)) for m in fetched])
    bad = np.argwhere(~np.isfinite(losses))
    if bad.size:
      j, k = bad[0]
      seed = f' (replica {k})' if losses.shape[1] > 1 else ''
      good = latest_checkpoint()
      where = f'step {good}' if good is not None else 'none yet'
      raise FloatingPointError(
        f'non-finite training loss ({losses[j, k]}) at step {last_step - len(losses) + 1 + j}{seed}; stopped. '
        f'Last good checkpoint in {workdir}: {where}, left intact.'
      )
    for loss, acc in zip(losses, accs, strict=True):  # step by step: resume-exact sums
      self.loss += loss.astype(np.float64) * batch_size
      self.correct += acc.astype(np.float64) * batch_size
      self.count += batch_size
    self._pending = []

  def to_meta(self) -> dict:
    return {'loss': self.loss.tolist(), 'correct': self.correct.tolist(), 'count': self.count, 'seconds': self.seconds}


def train_chunk(state, data, perm, first, *, length, batch_size, batch_sharding, augment, crop_padding):
  """Runs `length` train steps in one jitted call, on the device-resident `data`.

  Step j trains on the examples perm[(first + j) * batch_size :][:batch_size]. No step is
  conditional: XLA:GPU evaluates a lax.cond inside a loop by reading its predicate on the
  host every step, and copies the carried state around a pass-through branch. So a chunk
  has a fixed length, and the loop compiles one program per length it needs (see
  scan_chunk_steps). Returns the state and per-step metrics [length].
  """

  def body(state, j):
    idx = jax.lax.dynamic_slice(perm, ((first + j) * batch_size,), (batch_size,))
    batch = jax.tree.map(lambda a: jnp.take(a, idx, axis=0), data)
    batch = jax.lax.with_sharding_constraint(batch, batch_sharding)
    return train_step(state, batch, augment=augment, crop_padding=crop_padding)

  return jax.lax.scan(body, state, jnp.arange(length))


def scan_chunk_steps(steps_per_epoch: int, log_every_steps: int) -> int:
  """Steps per scanned chunk: the largest divisor of the epoch's steps that is at most
  log_every_steps, so an epoch is whole chunks of one length (one program). When that
  divisor is under half of log_every_steps (say, a prime number of steps per epoch),
  log_every_steps itself, and each epoch ends with a few single steps."""
  cap = min(log_every_steps, steps_per_epoch)
  best = max(d for d in range(1, cap + 1) if steps_per_epoch % d == 0)
  return best if 2 * best >= cap else log_every_steps


def _check_workdir_config(workdir: str, config_dict: dict):
  """A workdir belongs to one config: resuming with another would mix two runs."""
  path = os.path.join(workdir, CONFIG_FILE)
  if not os.path.exists(path):
    return
  with open(path) as f:
    old = json.load(f)
  diff = config_differences(old, config_dict)
  if diff:
    raise ConfigError(
      f'workdir {workdir} holds a run with another config ({"; ".join(diff)}); '
      'use a new --workdir, or the same config to resume'
    )


def _log_setup(exp: Experiment, dataset: data_lib.Dataset, acct: dict, mesh: Mesh, steps_per_epoch: int):
  logging.info(
    'data: %s from %s, %d train / %d test, images %s, augment=%s',
    dataset.name,
    dataset.source,
    len(dataset.train_images),
    len(dataset.test_images),
    dataset.image_shape,
    exp.data.augment,
  )
  logging.info('devices: %d in mesh %s (%s)', mesh.size, dict(mesh.shape), jax.devices()[0].platform)
  logging.info(
    'model: %d features -> hidden %s -> %d classes; connectivity %s',
    exp.num_patches * exp.model.channels,
    list(exp.model.widths),
    exp.model.num_classes,
    exp.connectivity,
  )
  for name, density in acct['layer_density'].items():
    logging.info('  %s: density %.4f', name, density)
  logging.info(
    'active params: head %d, total %d (dense-equivalent %d); sparse-layer density %.4f (sparsity %.2f%%)',
    acct['head_params'],
    acct['total_params'],
    acct['total_params_dense'],
    acct['density'],
    100 * acct['sparsity'],
  )
  logging.info(
    'FLOPs per example (forward): %.4g sparse, %.4g dense-equivalent (%.2fx fewer)',
    acct['flops_per_example'],
    acct['flops_per_example_dense'],
    acct['flops_per_example_dense'] / acct['flops_per_example'],
  )
  logging.info('%d steps per epoch of %d examples, %d epochs', steps_per_epoch, exp.batch_size, exp.num_epochs)


def make_train_states(config, *, num_train_examples: int | None = None) -> TrainState:
  """config.num_seeds independent train states (seeds seed, seed + 1, ...) stacked on axis 0.

  Replica k is make_train_state for seed config.seed + k: its own weights, masks, groups
  and keys. The loop vmaps the steps over this axis.
  """
  return stack_states(make_replicas(_experiment(config), num_train_examples))


def make_replicas(exp: Experiment, num_train_examples: int | None = None) -> list[TrainState]:
  """make_train_state for each seed exp.seed .. exp.seed + num_seeds - 1, unstacked."""
  return [
    make_train_state(dataclasses.replace(exp, seed=exp.seed + k), num_train_examples=num_train_examples)
    for k in range(exp.num_seeds)
  ]


def stack_states(states: list[TrainState]) -> TrainState:
  """Train states (same structure) stacked on a new leading axis."""
  leaves = [jax.tree.leaves(st) for st in states]
  return jax.tree.unflatten(jax.tree.structure(states[0]), [jnp.stack(xs) for xs in zip(*leaves, strict=True)])


def replica(states: TrainState, k: int) -> TrainState:
  """Replica k of seed-stacked train states."""
  return jax.tree.map(lambda x: x[k], states)


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
  """Trains and evaluates as the config says; resumes from the workdir's checkpoint.

  Returns the last metrics record (also the last evaluation line of
  WORKDIR/metrics.jsonl), or a record with `halted: True` when
  config.halt_after_steps stopped the run early.
  """
  exp = parse_config(config, jax.device_count())
  config_dict = json.loads(config.to_json())
  mesh = make_mesh(exp.num_devices)
  if os.path.isdir(workdir):
    _check_workdir_config(workdir, config_dict)
  dataset = data_lib.load_dataset(
    exp.data.name,
    source=exp.data.source,
    data_dir=exp.data.dir,
    tfds_data_dir=exp.data.tfds_data_dir,
    download=exp.data.download,
    synthetic=exp.data.synthetic,
  )
  n_train = len(dataset.train_images)
  if n_train < exp.batch_size:
    raise ConfigError(f'config.batch_size = {exp.batch_size}: must be <= the training set size ({n_train})')

  replicas = make_replicas(exp, num_train_examples=n_train)
  accts = [conn.accounting(st.params, st.masks, exp.num_patches, st.layout) for st in replicas]
  # One seed runs unstacked: a vmap of size 1 costs 40% on a CPU.
  states = stack_states(replicas) if exp.num_seeds > 1 else replicas[0]
  loop = _Loop(exp, workdir, dataset, mesh, replicas)
  _log_setup(exp, dataset, accts[0], mesh, loop.steps_per_epoch)

  os.makedirs(workdir, exist_ok=True)
  if not os.path.exists(os.path.join(workdir, CONFIG_FILE)):
    with open(os.path.join(workdir, CONFIG_FILE), 'w') as f:
      json.dump(config_dict, f, indent=2)
  loop.checkpoints = ckpt_lib.Checkpointer(workdir)
  loop.writer = metrics_lib.MetricWriter(workdir)
  try:
    return loop.run(states, accts)
  finally:
    loop.writer.close()
    loop.checkpoints.close()


_REWIRE_STREAM = 1


def _per_seed(name: str, values) -> dict:
  """A metric of every seed: the value itself for one seed; else mean, std and the list."""
  values = np.asarray(values, np.float64)
  if values.size == 1:
    return {name: float(values[0])}
  return {name: float(values.mean()), f'{name}_std': float(values.std(ddof=1)), f'{name}_per_seed': values.tolist()}


def _pick(args: tuple, in_axes, k: int) -> list:
  """Replica k's arguments: entry k of a tuple or of axis 0 where in_axes is 0, else the argument."""
  axes = in_axes if isinstance(in_axes, tuple) else (in_axes,) * len(args)
  return [
    (a[k] if isinstance(a, tuple) else jax.tree.map(lambda x: x[k], a)) if axis == 0 else a
    for a, axis in zip(args, axes, strict=True)
  ]


def _combine(outs: list):
  """Per-replica outputs -> train states as a tuple, everything else stacked on axis 0."""
  if isinstance(outs[0], TrainState):
    return tuple(outs)
  if isinstance(outs[0], tuple):
    return tuple(_combine([o[i] for o in outs]) for i in range(len(outs[0])))
  return jax.tree.map(lambda *xs: jnp.stack(xs), *outs)


class _Loop:
  """The training loop's fixed context: data, schedule, jitted functions, writers.

  With config.num_seeds > 1 every step, evaluation and mask update runs over all
  replicas (see over_seeds and jit): vmapped over a leading seed axis of the train state,
  or over a tuple of states, unrolled in one program or one program per replica. One
  seed runs on the unstacked state.
  """

  def __init__(self, exp: Experiment, workdir: str, dataset: data_lib.Dataset, mesh: Mesh, replicas: list):
    self.exp, self.workdir, self.dataset = exp, workdir, dataset
    self.num_seeds = exp.num_seeds
    self.replicated = NamedSharding(mesh, P())
    self.batch_sharding = NamedSharding(mesh, P('data'))  # one replica's batch (inside vmap)
    self.seeds_batch_sharding = NamedSharding(mesh, P(None, 'data'))
    self.rewire_batch_sharding = NamedSharding(mesh, P(None, None, 'data'))
    self.steps_per_epoch = len(dataset.train_images) // exp.batch_size
    self.total_steps = self.steps_per_epoch * exp.num_epochs
    cpu = jax.default_backend() == 'cpu'
    self.loop = exp.loop if exp.loop != 'auto' else ('steps' if cpu else 'scan')
    # Steps between progress syncs: one call of the scanned chunk, or log_every_steps steps.
    scan = self.loop == 'scan'
    self.chunk_steps = scan_chunk_steps(self.steps_per_epoch, exp.log_every_steps) if scan else exp.log_every_steps
    layout = exp.seed_layout if exp.seed_layout != 'auto' else ('sequential' if cpu else 'vmap')
    # 'unroll' and 'sequential' keep the replicas' states apart, as a tuple.
    self.split = self.num_seeds > 1 and layout in ('unroll', 'sequential')
    self.sequential = self.num_seeds > 1 and layout == 'sequential'
    self.options = compiler_options(exp)
    logging.info(
      'loop: %s; %d seed(s)%s; dots: %s',
      self.loop,
      self.num_seeds,
      f' ({layout})' if self.num_seeds > 1 else '',
      ('Eigen (config.cpu_dots)' if self.options else "XLA's default") if cpu else "the backend's",
    )
    active = [rewiring.count_active(st.masks) for st in replicas]
    self.rewire = dataclasses.replace(
      exp.rewiring,
      end_steps=exp.rewiring.end_steps or self.total_steps,
      active_edges=tuple(max(a) for a in zip(*active, strict=True)),  # a static bound for every seed
    )
    self.compile_seconds: dict[str, float] = {}  # by program, this process (see jit)
    self.checkpoints: ckpt_lib.Checkpointer | None = None
    self.writer: metrics_lib.MetricWriter | None = None

  def over_seeds(self, fn, in_axes=0):
    """fn over every replica, as one traceable function: vmapped over the seed axis, or unrolled.

    One seed: fn itself, on the unstacked state. seed_layout 'unroll' (and 'sequential',
    whose compiled form is in `jit`) keeps the states as a tuple and calls fn once per
    replica: each replica's matmuls stay plain (vmapped ones run slower on a CPU) and
    nothing is restacked. Outputs: train states stay a tuple, the rest is stacked on axis 0.
    """
    if self.num_seeds == 1:
      return fn
    if not self.split:
      return jax.vmap(fn, in_axes=in_axes)

    def unrolled(*args):
      return _combine([fn(*_pick(args, in_axes, k)) for k in range(self.num_seeds)])

    return unrolled

  def jit(self, fn, in_axes=0, donate: bool = False, example_args=None, name: str = ''):
    """over_seeds(fn), compiled with the run's compiler options.

    Given example_args it is compiled here, ahead, and the seconds that took go to
    self.compile_seconds[name]. seed_layout 'sequential' compiles fn for one replica and
    calls it once per replica: S programs one after another rather than one program of
    S, so XLA:CPU runs no two replicas' matmuls at once on the same cores.
    """
    if example_args is not None and not name:
      raise ValueError('Loop.jit: a program compiled ahead needs a name for its compile time')
    kw = {'donate_argnums': 0 if donate else (), 'compiler_options': self.options}
    t0 = time.perf_counter()
    f = jax.jit(fn if self.sequential else self.over_seeds(fn, in_axes), **kw)
    if example_args is not None:
      f = f.lower(*(_pick(example_args, in_axes, 0) if self.sequential else example_args)).compile()
      self.compile_seconds[name] = time.perf_counter() - t0
    if not self.sequential:
      return f

    def sequential(*args):
      return _combine([f(*_pick(args, in_axes, k)) for k in range(self.num_seeds)])

    return sequential

  def keys(self, states) -> jax.Array:
    return jnp.stack([st.key for st in states]) if self.split else states.key

  def unstack(self, x: np.ndarray) -> np.ndarray:
    """Drops the seed axis of host data (axis 0) for one seed."""
    return x if self.num_seeds > 1 else x[0]

  @functools.lru_cache(maxsize=2)  # noqa: B019 (one loop per run; holds two epochs' orders)
  def _permutations(self, epoch: int) -> np.ndarray:
    """[seeds, examples] (or [examples]): each replica's order of the training set."""
    n = len(self.dataset.train_images)
    return self.unstack(np.stack([epoch_permutation(self.exp.seed + k, epoch, n) for k in range(self.num_seeds)]))

  def batch_for(self, step: int) -> dict:
    """The host batches [seeds, batch, ...] that optimizer step `step` (1-based) trains on."""
    epoch, i = divmod(step - 1, self.steps_per_epoch)
    idx = self._permutations(epoch)[..., i * self.exp.batch_size : (i + 1) * self.exp.batch_size]
    return {'image': self.dataset.train_images[idx], 'label': self.dataset.train_labels[idx]}

  def rewire_batches(self, step: int) -> dict:
    """The latest hebbian_batches training batches: [seeds, k, batch, ...]."""
    steps = range(max(step - self.rewire.hebbian_batches, 0) + 1, step + 1)
    batches = [self.batch_for(s) for s in steps]
    stacked = jax.tree.map(lambda *xs: np.stack(xs, axis=1 if self.num_seeds > 1 else 0), *batches)
    return jax.device_put(stacked, self.rewire_batch_sharding if self.num_seeds > 1 else self.seeds_batch_sharding)

  def save(self, step, states, best, sums):
    states = stack_states(list(states)) if self.split else states  # one format for every layout
    self.checkpoints.save(step, states, {'best_test_accuracy': list(best), 'epoch_sums': sums.to_meta()})

  def chunk_size(self, step: int) -> int:
    """Steps from `step` to the loop's next event: a progress sync (every chunk_steps), the
    epoch's end, a mask update or the halt step."""
    spe, halt = self.steps_per_epoch, self.exp.halt_after_steps
    events = [self.chunk_steps - step % self.chunk_steps, spe - step % spe]
    if self.rewire.enabled:
      events.append(self.rewire.every_steps - step % self.rewire.every_steps)
    if halt > step:
      events.append(halt - step)
    return min(events)

  def chunk_sizes(self, step: int) -> list[int]:
    """The sizes of all the chunks this process will run, from `step` on."""
    halt = self.exp.halt_after_steps
    end = min(self.total_steps, halt) if halt > step else self.total_steps
    sizes = []
    while step < end:
      sizes.append(self.chunk_size(step))
      step += sizes[-1]
    return sizes

  def make_chunk_runner(self, states, step: int):
    """run(states, epoch, position, n) -> (states, metrics [n, seeds]), by the configured loop.

    Its programs are compiled here, for states like `states` at step `step`.
    """
    exp = self.exp
    step_fn = functools.partial(train_step, augment=exp.data.augment, crop_padding=exp.data.crop_padding)
    if self.loop == 'steps':
      sharding = self.seeds_batch_sharding if self.num_seeds > 1 else self.batch_sharding

      def put(batch):
        if self.sequential:  # each replica's batch on its own: nothing to slice on the device
          return tuple(
            jax.device_put({k: v[r] for k, v in batch.items()}, self.batch_sharding) for r in range(self.num_seeds)
          )
        return jax.device_put(batch, sharding)

      train_fn = self.jit(step_fn, donate=True, example_args=(states, put(self.batch_for(1))), name='train_step')

      def run(states, epoch, position, n):
        metrics = []
        for i in range(n):
          step = epoch * self.steps_per_epoch + position + i + 1
          states, m = train_fn(states, put(self.batch_for(step)))
          metrics.append(m)
        return states, jax.tree.map(lambda *xs: jnp.stack(xs), *metrics)

      return run

    def chunk(length):
      return functools.partial(
        train_chunk,
        length=length,
        batch_size=exp.batch_size,
        batch_sharding=self.batch_sharding,
        augment=exp.data.augment,
        crop_padding=exp.data.crop_padding,
      )

    data = jax.device_put({'image': self.dataset.train_images, 'label': self.dataset.train_labels}, self.replicated)
    perm = jax.device_put(
      self.unstack(np.zeros((self.num_seeds, len(self.dataset.train_images)), np.int32)), self.replicated
    )
    example, in_axes, full = (states, data, perm, 0), (0, None, 0, None), self.chunk_steps
    chunk_fn = self.jit(chunk(full), in_axes, donate=True, example_args=example, name='train_chunk')
    # Chunks cut short (by a mask update, the halt step, or epochs of a length that no
    # chunk divides) run as single steps, a second program compiled only when needed.
    short = any(n != full for n in self.chunk_sizes(step))
    single_fn = self.jit(chunk(1), in_axes, donate=True, example_args=example, name='train_chunk_1') if short else None
    perms = {}

    def run(states, epoch, position, n):
      if epoch not in perms:  # the epoch's orders: 4 bytes per example and seed, sent once per epoch
        perms.clear()
        perms[epoch] = jax.device_put(self._permutations(epoch).astype(np.int32), self.replicated)
      if n == full:
        states, metrics = chunk_fn(states, data, perms[epoch], position)
      else:
        parts = []
        for i in range(n):
          states, m = single_fn(states, data, perms[epoch], position + i)
          parts.append(m)
        metrics = jax.tree.map(lambda *xs: jnp.concatenate(xs, axis=-1), *parts)
      return states, jax.tree.map(lambda x: x.T, metrics)  # [(seeds,) n] -> [n(, seeds)]

    return run

  def run(self, states: TrainState, accts: list[dict]) -> dict:
    exp, spe, seeds = self.exp, self.steps_per_epoch, self.num_seeds
    states = jax.device_put(states, self.replicated)
    meta = {'best_test_accuracy': [0.0] * seeds, 'epoch_sums': _EpochSums(seeds).to_meta()}
    restored = self.checkpoints.restore(states)
    if restored is not None:
      states, meta = restored
      logging.info(
        'resumed from the checkpoint at step %d in %s', int(np.ravel(states.step)[0]), self.checkpoints.directory
      )
    step = int(np.ravel(states.step)[0])
    self.writer.truncate_after(step)
    if self.split:
      states = tuple(replica(states, k) for k in range(seeds))
    if step >= self.total_steps:
      logging.info('run already finished (step %d of %d): nothing to train', step, self.total_steps)
      evals = metrics_lib.eval_records(self.writer.records())
      return evals[-1] if evals else {'step': step}

    # Every program is compiled ahead, so epoch times are training alone and the
    # compile time is its own figure (the first evaluation record's compile_seconds).
    run_chunk = self.make_chunk_runner(states, step)
    test_batch = next(eval_batches(self.dataset.test_images, self.dataset.test_labels, exp.eval_batch_size))
    example = (states, jax.device_put(test_batch, self.batch_sharding))
    eval_fn = self.jit(eval_step, in_axes=(0, None), example_args=example, name='eval_step')
    rewire_keys = self.over_seeds(jax.random.fold_in, in_axes=(0, None))(self.keys(states), _REWIRE_STREAM)
    step_keys = jax.jit(self.over_seeds(jax.random.fold_in, in_axes=(0, None)))
    rewire_fn = None
    if self.rewire.enabled:  # so the updates' time share is their run time too
      logging.info('rewiring: %s', self.rewire_summary())
      update = functools.partial(rewiring.update_masks, cfg=self.rewire)
      example = (states, self.rewire_batches(max(step, self.rewire.hebbian_batches)), rewire_keys)
      rewire_fn = self.jit(update, donate=True, example_args=example, name='update_masks')
    compile_seconds = sum(self.compile_seconds.values())
    logging.info(
      'compiled in %.2fs: %s', compile_seconds, ', '.join(f'{k} {v:.2f}s' for k, v in self.compile_seconds.items())
    )
    progress = metrics_lib.Progress(exp.progress)
    best = np.asarray(meta['best_test_accuracy'], np.float64)
    record = {}

    for epoch in range(step // spe, exp.num_epochs):
      first = step - epoch * spe
      sums = _EpochSums(seeds, **meta['epoch_sums']) if first > 0 else _EpochSums(seeds)
      rewire_seconds = 0.0
      progress.start_epoch()
      t0 = time.perf_counter()
      while step < (epoch + 1) * spe:
        n = self.chunk_size(step)  # up to the next event
        states, metrics = run_chunk(states, epoch, step - epoch * spe, n)
        sums.add(metrics)
        step += n
        sums.sync(step, exp.batch_size, self.workdir, self.checkpoints.latest_step)
        done = (step - epoch * spe - first) * exp.batch_size * seeds
        loss, acc = float(np.mean(sums.loss)) / sums.count, float(np.mean(sums.correct)) / sums.count
        progress.update(epoch + 1, step - epoch * spe, spe, loss, acc, done)
        if self.rewire.due(step):
          states, seconds = self.update_masks(rewire_fn, states, step, step_keys(rewire_keys, step))
          rewire_seconds += seconds
        if step == exp.halt_after_steps and step < (epoch + 1) * spe:
          sums.seconds += time.perf_counter() - t0
          self.save(step, states, best, sums)
          progress.end_epoch()
          logging.info('halted at step %d (config.halt_after_steps); rerun the command to resume', step)
          return {'step': step, 'halted': True}
      sums.seconds += time.perf_counter() - t0
      progress.end_epoch()

      last_epoch = epoch == exp.num_epochs - 1
      if (epoch + 1) % exp.eval_every_epochs == 0 or last_epoch:
        test = evaluate(
          eval_fn,
          states,
          self.dataset.test_images,
          self.dataset.test_labels,
          exp.eval_batch_size,
          self.batch_sharding,
        )
        best = np.maximum(best, test['accuracy'])
        record = {
          'kind': 'eval',
          'step': step,
          'epoch': epoch + 1,
          **_per_seed('train_loss', sums.loss / sums.count),
          **_per_seed('train_accuracy', sums.correct / sums.count),
          **_per_seed('test_loss', test['loss']),
          **_per_seed('test_accuracy', test['accuracy']),
          **_per_seed('best_test_accuracy', best),
          'sparsity': float(np.mean([a['sparsity'] for a in accts])),
          'head_params': int(round(np.mean([a['head_params'] for a in accts]))),
          'total_params': int(round(np.mean([a['total_params'] for a in accts]))),
          'flops_per_example': float(np.mean([a['flops_per_example'] for a in accts])),
          'data_source': self.dataset.source,
          'learning_rate': float(optim.make_schedule(exp.optim, self.total_steps)(step)),
          # Throughput over all replicas: examples trained on per second of training.
          'examples_per_sec': sums.count * seeds / max(sums.seconds - rewire_seconds, 1e-9),
          'epoch_seconds': sums.seconds,
        }
        if compile_seconds:  # the first evaluation after this process compiled
          record['compile_seconds'], compile_seconds = compile_seconds, 0.0
        if seeds > 1:
          record['num_seeds'] = seeds
        if self.rewire.enabled:
          record['rewire_seconds'] = rewire_seconds
          record['rewire_time_share'] = rewire_seconds / max(sums.seconds, 1e-9)
        self.writer.write(record)
        logging.info(
          'epoch %d step %d: train loss %.4f acc %.4f | test loss %.4f acc %.4f (best %.4f) | %.0f ex/s%s',
          epoch + 1,
          step,
          record['train_loss'],
          record['train_accuracy'],
          record['test_loss'],
          record['test_accuracy'],
          record['best_test_accuracy'],
          record['examples_per_sec'],
          f' | mean of {seeds} seeds, test acc std {record["test_accuracy_std"]:.4f}' if seeds > 1 else '',
        )
      if (epoch + 1) % exp.checkpoint_every_epochs == 0 or last_epoch or step == exp.halt_after_steps:
        self.save(step, states, best, _EpochSums(seeds))
      if step == exp.halt_after_steps and not last_epoch:
        logging.info('halted at step %d (config.halt_after_steps); rerun the command to resume', step)
        return {'step': step, 'halted': True}
    return record

  def rewire_summary(self) -> str:
    r = self.rewire
    return (
      f'prune {r.prune}, grow {r.grow} among {r.candidates} absent edges, fraction {r.fraction} '
      f'({r.fraction_schedule}) every {r.every_steps} steps in [{r.start_steps}, {r.end_steps}], '
      f'scores over {r.hebbian_batches} batch(es), reset optimizer state: {r.reset_optimizer_state}'
    )

  def update_masks(self, rewire_fn, states, step: int, rngs) -> tuple[TrainState, float]:
    """Runs one mask update (every replica), logs it, and returns the states and its wall time."""
    jax.block_until_ready(states)  # time the update alone, not the steps queued before it
    t0 = time.perf_counter()
    states, info = rewire_fn(states, self.rewire_batches(step), rngs)
    info = jax.device_get(info)
    seconds = time.perf_counter() - t0
    record = {'kind': 'rewire', 'step': step, 'seconds': seconds}
    parts = []
    for layer, values in info.items():
      summary = {}
      for key, value in values.items():
        # Counts are ints, the rest floats; a turnover of -1 means "no update before".
        per_seed = [None if key == 'turnover' and v < 0 else v for v in np.atleast_1d(value).tolist()]
        record[f'{layer}/{key}'] = per_seed[0] if self.num_seeds == 1 else per_seed
        known = [v for v in per_seed if v is not None]
        summary[key] = float(np.mean(known)) if known else None
      groups = f' intra {summary["intra"]:.0f} inter {summary["inter"]:.0f}' if 'intra' in summary else ''
      parts.append(
        f'{layer}: -{summary["pruned"]:.0f} +{summary["grown"]:.0f}{groups} '
        f'|w|pruned {summary["pruned_mean_abs_weight"]:.4f}'
        + (f' turnover {summary["turnover"]:.3f}' if summary['turnover'] is not None else '')
      )
    self.writer.write(record)
    mean = f' (mean of {self.num_seeds} seeds)' if self.num_seeds > 1 else ''
    logging.info('rewire at step %d (%.3fs)%s: %s', step, seconds, mean, '; '.join(parts))
    return states, seconds
