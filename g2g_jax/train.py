"""make_train_state, the pure train / eval steps, and the train_and_evaluate loop.

The loop is the one place that jits, schedules, evaluates, logs and checkpoints.
Masks are applied here, never in the model: gradients are masked before the optimizer
and params re-masked after each update, so a pruned weight is exactly 0 at all times.
"""

import contextlib
import functools
import json
import os
import time
from typing import Any, NamedTuple

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
from g2g_jax import hosts, input_pipeline, interrupts, models, optim, replicas, rewiring, schedule, sparse
from g2g_jax import metrics as metrics_lib
from g2g_jax import workdir as workdir_lib
from g2g_jax.config import RunSpec, check_same_run, parse_config
from g2g_jax.state import TrainState, apply_masks

REWIRE_STREAM = 1  # fold_in(state.key, REWIRE_STREAM): the mask updates' keys, apart from the steps'


def make_mesh(num_devices: int = 0) -> Mesh:
  """A 1-D mesh over the first `num_devices` devices (0 = all), axis 'data'."""
  devices = jax.devices()[: num_devices or None]
  return Mesh(np.array(devices), ('data',))


def make_train_state(config: ml_collections.ConfigDict) -> TrainState:
  """The state a run of this config starts from: params (jitted init), masks, masked and
  rescaled params, and optimizer state. Groups, masks and weights come from config.seed.

  With config.num_seeds = S > 1: S replicas, seeds seed .. seed + S - 1, stacked on a
  leading axis (replicas.replica(state, k) is replica k).
  """
  return init_state(parse_config(config))


def init_state(spec: RunSpec) -> TrainState:
  """make_train_state for a parsed spec."""
  states = [_seed_state(spec, spec.seed + k) for k in range(spec.num_seeds)]
  if len(states) == 1:  # one seed runs unstacked
    return states[0]
  bound = tuple(max(counts) for counts in zip(*(st.active_edges for st in states), strict=True))
  return replicas.stack([st.replace(active_edges=bound) for st in states])


def _seed_state(spec: RunSpec, seed: int) -> TrainState:
  k_init, k_run = jax.random.split(jax.random.PRNGKey(seed))
  model = models.make_model(spec.model, spec.connectivity)
  dummy = jnp.zeros((1, *spec.data.info.image_shape), jnp.float32)
  variables = jax.jit(model.init)(k_init, dummy)
  params, sparsity = sparse.sparsify(variables['params'], spec.connectivity, seed, variables.get('layout'))
  return TrainState.create(
    apply_fn=model.apply,
    params=params,
    tx=optim.make_optimizer(spec.optim, spec.total_steps),
    key=k_run,
    masks=sparsity.masks,
    last_grown=sparsity.last_grown,
    layout=sparsity.layout,
    groups=sparsity.groups,
    active_edges=sparsity.active_edges,
  )


def loss_and_logits(params, state, images, labels):
  logits = state.apply_fn(state.variables(params), images)
  return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean(), logits


def train_step(state: TrainState, batch: dict, *, augment: str, crop_padding: int, num_microbatches: int = 1):
  """One optimizer step on a batch of uint8 images. Pure; jitted once by the loop.

  Gradients and the updated params are masked, so pruned weights stay exactly 0. With
  num_microbatches = k > 1 the gradient is summed over k slices of the batch, one at a time.
  """
  key = jax.random.fold_in(state.key, state.step)
  images = input_pipeline.preprocess(key, batch['image'], augment, crop_padding)
  grad_fn = jax.value_and_grad(loss_and_logits, has_aux=True)
  if num_microbatches == 1:
    (loss, logits), grads = grad_fn(state.params, state, images, batch['label'])
    correct = jnp.argmax(logits, -1) == batch['label']
  else:
    loss, grads, correct = _microbatched(grad_fn, state, images, batch['label'], num_microbatches)
  grads = apply_masks(grads, state.masks)
  updates, opt_state = state.tx.update(grads, state.opt_state, state.params)
  params = optax.apply_updates(state.params, updates)
  params = apply_masks(params, state.masks)  # pruned entries may carry moments after rewiring
  state = state.replace(step=state.step + 1, params=params, opt_state=opt_state)
  return state, {'loss': loss, 'accuracy': jnp.mean(correct)}


def _microbatched(grad_fn, state: TrainState, images, labels, k: int):
  """(mean loss, gradient, correct [k, B / k]) of the batch, from k slices of it, one at a time.

  Slice j holds examples j, j + k, j + 2k, ...: each device keeps its share of every slice.
  Activations of a slice stay in a CPU's caches, where the whole batch's do not.
  """

  def split(x):
    return x.reshape(x.shape[0] // k, k, *x.shape[1:]).swapaxes(0, 1)

  def body(acc, slice_):
    (loss, logits), grads = grad_fn(state.params, state, *slice_)
    return jax.tree.map(jnp.add, acc, (loss, grads)), jnp.argmax(logits, -1) == slice_[1]

  zero = (jnp.zeros((), jnp.float32), jax.tree.map(jnp.zeros_like, state.params))
  (loss, grads), correct = jax.lax.scan(body, zero, (split(images), split(labels)))
  return loss / k, jax.tree.map(lambda g: g / k, grads), correct


def eval_step(state: TrainState, batch: dict):
  """Sums of loss and correct predictions over the examples with weight 1."""
  images = input_pipeline.to_float(batch['image'])
  logits = state.apply_fn(state.variables(), images)
  losses = optax.softmax_cross_entropy_with_integer_labels(logits, batch['label'])
  correct = jnp.argmax(logits, -1) == batch['label']
  w = batch['weight']
  return {'loss': jnp.sum(losses * w), 'correct': jnp.sum(correct * w), 'count': jnp.sum(w)}


def train_chunk(state, data, order, first, *, length, batch_size, batch_sharding, **step_kw):
  """`length` train steps in one call, on the device-resident `data`: step j trains on the
  examples order[(first + j) * batch_size :][:batch_size]. Returns the state and per-step
  metrics [length]."""

  def body(state, j):
    idx = jax.lax.dynamic_slice(order, ((first + j) * batch_size,), (batch_size,))
    batch = jax.tree.map(lambda a: jnp.take(a, idx, axis=0), data)
    batch = jax.lax.with_sharding_constraint(batch, batch_sharding)
    return train_step(state, batch, **step_kw)

  return jax.lax.scan(body, state, jnp.arange(length))


def evaluate(state: TrainState, images, labels, batch_size: int, eval_fn=None, sharding=None) -> dict:
  """Loss and accuracy over a whole split, per seed for stacked states (arrays [seeds]).

  eval_fn defaults to eval_step, jitted (vmapped over stacked states).
  """
  if eval_fn is None:
    eval_fn = jax.jit(replicas.over_seeds(eval_step, int(np.size(state.step)), in_axes=(0, None)))
  batches = input_pipeline.eval_batches(images, labels, batch_size)
  sums = [eval_fn(state, jax.device_put(b, sharding) if sharding else b) for b in batches]
  total = jax.tree.map(lambda *v: np.atleast_1d(np.sum(np.stack(v).astype(np.float64), axis=0)), *jax.device_get(sums))
  return {'loss': total['loss'] / total['count'], 'accuracy': total['correct'] / total['count']}


class Run(NamedTuple):
  config: ml_collections.ConfigDict
  state: TrainState  # the last checkpoint's: params, masks, optimizer state, step
  records: list[dict]  # metrics.jsonl, oldest first


def load_run(workdir: str) -> Run:
  """A run's config, the train state of its last checkpoint and its metrics records."""
  saved = ckpt_lib.saved_config(workdir)
  if saved is None:
    raise workdir_lib.WorkdirError(f'{workdir}: no run to load (no checkpoint, no config.json)')
  config = ml_collections.ConfigDict(saved)
  with contextlib.closing(ckpt_lib.Checkpointer(workdir)) as ckpt:
    restored = ckpt.restore(make_train_state(config))
  if restored is None:
    raise workdir_lib.WorkdirError(f'{workdir}: no checkpoint to load')
  return Run(config, restored[0], metrics_lib.read_records(workdir))


def _log_setup(spec: RunSpec, dataset: data_lib.Dataset, acct: dict, mesh: Mesh):
  logging.info(
    'data: %s from %s, %d train / %d test, images %s, augment=%s',
    *(dataset.name, dataset.source, len(dataset.train_images), len(dataset.test_images), dataset.image_shape),
    spec.data.augment,
  )
  logging.info('devices: %d in mesh %s (%s)', mesh.size, dict(mesh.shape), jax.devices()[0].platform)
  logging.info('resolved: %s; %d seed(s)', spec.resolved(), spec.num_seeds)
  logging.info('model: %s; connectivity %s', spec.model, spec.connectivity)
  for name, density in acct['layer_density'].items():
    logging.info('  %s: density %.4f', name, density)
  logging.info(
    'active params: head %d, total %d (dense-equivalent %d); sparse-layer density %.4f (sparsity %.2f%%)',
    *(acct['head_params'], acct['total_params'], acct['total_params_dense'], acct['density'], 100 * acct['sparsity']),
  )
  dense, sparse = acct['flops_per_example_dense'], acct['flops_per_example']
  logging.info(
    'FLOPs per example (forward): %.4g sparse, %.4g dense-equivalent (%.2fx fewer)', sparse, dense, dense / sparse
  )


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
  """Trains and evaluates as the config says; resumes from the workdir's checkpoint.

  Returns the last evaluation record (also the last evaluation line of
  WORKDIR/metrics.jsonl), or {'step': s, 'halted': True} when config.halt_after_steps
  stopped the run at step s. SIGTERM or SIGINT saves a checkpoint at the next step
  boundary and raises interrupts.Stopped.
  """
  spec = parse_config(config)
  config_dict = json.loads(config.to_json())
  workdir = workdir_lib.check_path(workdir)
  if os.path.isdir(workdir):  # fail before loading anything
    check_same_run(ckpt_lib.saved_config(workdir), config_dict, workdir)
  dataset = data_lib.check_sizes(data_lib.load_dataset(spec.data), spec.data.info)
  mesh = make_mesh(spec.num_devices)
  state = init_state(spec)
  seeds, spe, batch_size = spec.num_seeds, spec.steps_per_epoch, spec.batch_size
  accts = [
    conn.accounting(st.params, st.masks, spec.model.runs, spec.model.head, st.layout)
    for st in ([state] if seeds == 1 else [replicas.replica(state, k) for k in range(seeds)])
  ]
  _log_setup(spec, dataset, accts[0], mesh)

  replicated = NamedSharding(mesh, P())
  batch_sharding = NamedSharding(mesh, P('data'))  # one replica's batch
  lead_sharding = NamedSharding(mesh, P(None, 'data'))  # batches behind one leading axis
  train_sharding = lead_sharding if seeds > 1 else batch_sharding
  hebbian_sharding = NamedSharding(mesh, P(None, None, 'data')) if seeds > 1 else lead_sharding
  batches = input_pipeline.TrainBatches(
    dataset.train_images, dataset.train_labels, batch_size, range(spec.seed, spec.seed + seeds)
  )
  scanned = spec.loop == 'scan'
  plan = schedule.Schedule(
    steps_per_epoch=spe,
    num_epochs=spec.num_epochs,
    # Metrics are read after each scanned chunk, or every log_every_steps steps.
    sync_every_steps=schedule.scan_chunk_steps(spe, spec.log_every_steps) if scanned else spec.log_every_steps,
    eval_every_epochs=spec.eval_every_epochs,
    checkpoint_every_epochs=spec.checkpoint_every_epochs,
    rewire_every_steps=spec.rewiring.rewire_every_steps if spec.rewiring.enabled else 0,
    rewire_start_steps=spec.rewiring.rewire_start_steps,
    rewire_end_steps=spec.rewiring.rewire_end_steps,
    halt_after_steps=spec.halt_after_steps,
  )

  hosts.check_shared(workdir)
  with contextlib.ExitStack() as stack:
    lock = workdir_lib.Lock(workdir)  # held by process 0 for every process
    hosts.on_primary(lock.__enter__, 'locking the workdir')
    if hosts.is_primary():
      stack.push(lock)
    stop = stack.enter_context(interrupts.StopRequests())

    def stop_now():  # every process stops at the same step: one signalled process stops them all
      return hosts.any_process(bool(stop))

    ckpt = stack.enter_context(contextlib.closing(ckpt_lib.Checkpointer(workdir)))
    saved = ckpt_lib.saved_config(workdir)  # again, now that no other run can change the workdir
    check_same_run(saved, config_dict, workdir)
    identity = saved or config_dict
    hosts.on_primary(lambda: workdir_lib.keep_config(workdir, identity), 'writing config.json')
    state = jax.device_put(state, replicated)
    meta = {'best_test_accuracy': [0.0] * seeds, 'epoch_sums': metrics_lib.EpochSums(seeds).to_meta()}
    restored = ckpt.restore(state)
    if restored is not None:
      state, meta = restored
      logging.info('resumed from the checkpoint at step %d in %s', int(np.ravel(state.step)[0]), ckpt.directory)
    step = int(np.ravel(state.step)[0])
    writer = metrics_lib.MetricWriter(workdir, step, meta.get('records'), primary=hosts.is_primary())
    stack.enter_context(contextlib.closing(writer))
    if step >= spec.total_steps:
      logging.info('run already finished (step %d of %d): nothing to train', step, spec.total_steps)
      evals = metrics_lib.eval_records(writer.records())
      return evals[-1] if evals else {'step': step}
    # Every program is compiled ahead, so epoch times are training alone and the compile
    # time is its own figure (the first evaluation record's compile_seconds).
    compile_seconds = {}

    def compile_ahead(name, fn, *example_args, in_axes=0, donate=False):
      t0 = time.perf_counter()
      jitted = jax.jit(replicas.over_seeds(fn, seeds, in_axes), donate_argnums=0 if donate else ())
      compiled = jitted.lower(*example_args).compile()
      compile_seconds[name] = time.perf_counter() - t0
      return compiled

    step_kw = dict(
      augment=spec.data.augment, crop_padding=spec.data.crop_padding, num_microbatches=spec.num_microbatches
    )
    step_fn = functools.partial(train_step, **step_kw)
    if not scanned:
      train_fn = compile_ahead('train_step', step_fn, state, batches.device_batch(0, train_sharding), donate=True)

      def run_chunk(state, step, n):
        metrics = []
        for i in range(n):
          if i and stop_now():  # a stop request ends the chunk at this step boundary
            break
          state, m = train_fn(state, batches.device_batch(step + i, train_sharding))
          metrics.append(m)
        return state, jax.tree.map(lambda *xs: jnp.stack(xs), *metrics)

    else:
      data = jax.device_put({'image': dataset.train_images, 'label': dataset.train_labels}, replicated)
      example = (state, data, jax.device_put(np.zeros_like(batches.orders(0), np.int32), replicated), 0)
      chunk_kw = dict(batch_size=batch_size, batch_sharding=batch_sharding, **step_kw)
      full = plan.sync_every_steps

      def compile_chunk(name, length):
        fn = functools.partial(train_chunk, length=length, **chunk_kw)
        return compile_ahead(name, fn, *example, in_axes=(0, None, 0, None), donate=True)

      chunk_fn = compile_chunk('train_chunk', full)
      # Chunks cut short (by a mask update, the halt step, or epochs of a length that no
      # chunk divides) run as single steps, a second program compiled only when needed.
      if any(n != full for n in plan.chunks(step)):
        single_fn = compile_chunk('train_chunk_1', 1)
      orders = {}

      def run_chunk(state, step, n):
        epoch, position = divmod(step, spe)
        if epoch not in orders:  # the epoch's orders: 4 bytes per example and seed, sent once per epoch
          orders.clear()
          orders[epoch] = jax.device_put(batches.orders(epoch).astype(np.int32), replicated)
        if n == full:
          state, metrics = chunk_fn(state, data, orders[epoch], position)
        else:
          parts = []
          for i in range(n):
            state, m = single_fn(state, data, orders[epoch], position + i)
            parts.append(m)
          metrics = jax.tree.map(lambda *xs: jnp.concatenate(xs, axis=-1), *parts)
        return state, jax.tree.map(lambda x: x.T, metrics)  # [(seeds,) n] -> [n(, seeds)]

    test_batch = next(input_pipeline.eval_batches(dataset.test_images, dataset.test_labels, spec.eval_batch_size))
    eval_example = jax.device_put(test_batch, batch_sharding)
    eval_fn = compile_ahead('eval_step', eval_step, state, eval_example, in_axes=(0, None))
    rewire_keys = replicas.over_seeds(jax.random.fold_in, seeds, in_axes=(0, None))(state.key, REWIRE_STREAM)
    step_keys = jax.jit(replicas.over_seeds(jax.random.fold_in, seeds, in_axes=(0, None)))
    k_hebbian = spec.rewiring.hebbian_batches

    def hebbian_batches(step):
      return jax.device_put(batches.latest(step, k_hebbian), hebbian_sharding)

    if spec.rewiring.enabled:
      logging.info('rewiring: %s', spec.rewiring.summary())
      update = functools.partial(rewiring.update_masks, spec=spec.rewiring)
      example = (state, hebbian_batches(max(step, k_hebbian)), rewire_keys)
      rewire_fn = compile_ahead('update_masks', update, *example, donate=True)
    logging.info(
      'compiled in %.2fs: %s',
      sum(compile_seconds.values()),
      ', '.join(f'{k} {v:.2f}s' for k, v in compile_seconds.items()),
    )

    def rewire(state, step):
      jax.block_until_ready(state)  # time the update alone, not the steps queued before it
      t0 = time.perf_counter()
      state, info = rewire_fn(state, hebbian_batches(step), step_keys(rewire_keys, step))
      info = jax.device_get(info)
      seconds = time.perf_counter() - t0
      record, line = metrics_lib.rewire_record(step, seconds, info, seeds)
      writer.write(record)
      logging.info('%s', line)
      return state, seconds

    def diverged(what, value, step, k=0):
      good = ckpt.latest_step()
      return FloatingPointError(
        f'non-finite {what} ({value}) at step {step}{f" (replica {k})" if seeds > 1 else ""}; stopped. '
        f'Last good checkpoint in {workdir}: {"none yet" if good is None else f"step {good}"}, left intact.'
      )

    def sync(sums, step):
      bad = sums.sync(step, batch_size)
      if bad is not None:
        raise diverged('training loss', bad[2], bad[0], bad[1])

    def save(step, state, sums):
      meta = {'best_test_accuracy': list(best), 'epoch_sums': sums.to_meta(), 'config': identity}
      ckpt.save(step, state, {**meta, 'records': writer.records()})

    def eval_record(state, step, sums, rewire_seconds):
      nonlocal best, unreported_compile
      test = evaluate(state, dataset.test_images, dataset.test_labels, spec.eval_batch_size, eval_fn, batch_sharding)
      if not np.all(np.isfinite(test['loss'])):
        k = int(np.argmin(np.isfinite(test['loss'])))
        raise diverged('test loss', test['loss'][k], step, k)
      best = np.maximum(best, test['accuracy'])
      record = metrics_lib.eval_record(
        step=step,
        epoch=step // spe,
        sums=sums,
        test=test,
        best=best,
        accts=accts,
        data_source=dataset.source,
        learning_rate=float(optim.make_schedule(spec.optim, spec.total_steps)(step)),
        # Throughput over all replicas: examples trained on per second of training.
        examples_per_sec=sums.count * seeds / max(sums.seconds - rewire_seconds, 1e-9),
        epoch_seconds=sums.seconds,
      )
      if unreported_compile:  # the first evaluation after this process compiled
        record['compile_seconds'], unreported_compile = unreported_compile, 0.0
      if spec.rewiring.enabled:
        record['rewire_seconds'] = rewire_seconds
        record['rewire_time_share'] = rewire_seconds / max(sums.seconds, 1e-9)
      return record

    best = np.asarray(meta['best_test_accuracy'], np.float64)
    unreported_compile = sum(compile_seconds.values())
    progress = metrics_lib.Progress(spec.progress if hosts.is_primary() else 'none')
    record = {}
    while step < plan.end(step):
      epoch_start, t0, rewire_seconds = step, time.perf_counter(), 0.0
      sums = metrics_lib.EpochSums(seeds, **meta['epoch_sums']) if step % spe else metrics_lib.EpochSums(seeds)
      progress.start_epoch()
      while True:  # one epoch, or what is left of it
        state, metrics = run_chunk(state, step, plan.next_chunk(step))
        sums.add(metrics)
        step += len(metrics['loss'])
        sync(sums, step)
        epoch = (step - 1) // spe
        done = (step - epoch_start) * batch_size * seeds
        progress.update(epoch + 1, step - epoch * spe, spe, sums.mean_loss(), sums.mean_accuracy(), done)
        if plan.rewire(step):
          state, seconds = rewire(state, step)
          rewire_seconds += seconds
        stopping = stop_now()
        if plan.epoch_end(step) or plan.halt(step) or stopping:
          break
      sums.seconds += time.perf_counter() - t0
      progress.end_epoch()
      if plan.evaluate(step):
        record = eval_record(state, step, sums, rewire_seconds)
        writer.write(record)
        logging.info('%s', metrics_lib.eval_line(record))
      if plan.checkpoint(step) or stopping:
        save(step, state, sums if step % spe else metrics_lib.EpochSums(seeds))
      if stopping:
        ckpt.wait()
        logging.warning('stopped at step %d: checkpoint saved in %s; rerun the command to resume', step, ckpt.directory)
        raise interrupts.Stopped(stop.signum, step)
      if plan.halt(step) and step < spec.total_steps:
        logging.info('halted at step %d (config.halt_after_steps); rerun the command to resume', step)
        return {'step': step, 'halted': True}
      meta = {'epoch_sums': metrics_lib.EpochSums(seeds).to_meta()}
    return record
