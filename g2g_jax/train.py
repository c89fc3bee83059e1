"""make_train_state, the pure train / eval steps, and the train_and_evaluate loop.

The loop is the one place that jits, schedules, evaluates, logs and checkpoints.
Masks are applied here, never in the model: gradients are masked before the optimizer
and params re-masked after each update, so a pruned weight is exactly 0 at all times.
"""

import contextlib
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
from g2g_jax import hosts, input_pipeline, lifecycle, optim, replicas, rewiring, runners, sparse
from g2g_jax import metrics as metrics_lib
from g2g_jax import workdir as workdir_lib
from g2g_jax.config import RunSpec, check_same_run, parse_config
from g2g_jax.state import TrainState, apply_masks


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
  edges = zip(*(st.sparsity.active_edges for st in states), strict=True)
  bound = tuple(max(counts) for counts in edges)
  return replicas.stack([st.replace(sparsity=st.sparsity.replace(active_edges=bound)) for st in states])


def _seed_state(spec: RunSpec, seed: int) -> TrainState:
  k_init, k_run = jax.random.split(jax.random.PRNGKey(seed))
  model = spec.model.build(spec.connectivity)
  dummy = jnp.zeros((1, *spec.data.info.image_shape), jnp.float32)
  variables = jax.jit(model.init)(k_init, dummy)
  params, sparsity = sparse.sparsify(variables['params'], spec.connectivity, seed, variables.get('layout'))
  return TrainState.create(
    apply_fn=model.apply,
    params=params,
    tx=optim.make_optimizer(spec.optim, spec.total_steps),
    key=k_run,
    sparsity=sparsity,
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
  grads = apply_masks(grads, state.sparsity.masks)
  updates, opt_state = state.tx.update(grads, state.opt_state, state.params)
  params = optax.apply_updates(state.params, updates)
  params = apply_masks(params, state.sparsity.masks)  # pruned entries may carry moments after rewiring
  # The norms of what the step computes anyway; the gradient's is grad_norm, apart: one more
  # consumer of the gradient moves XLA's fusion, and with it the results' last bits.
  norms = {'l2_params': optax.global_norm(params), 'l2_updates': optax.global_norm(updates)}
  state = state.replace(step=state.step + 1, params=params, opt_state=opt_state)
  return state, {'loss': loss, 'accuracy': jnp.mean(correct), **norms}


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


def update_masks(state: TrainState, batch: dict, rng: jax.Array, *, spec: rewiring.RewireSpec):
  """rewiring.rewire for a TrainState and batches of uint8 images: {'image': [k, B, H, W, C],
  'label': [k, B]}, the k latest training batches (k = spec.hebbian_batches). Returns the new
  state and rewire's info. Pure; jitted once by the loop."""

  def inputs(b):
    return input_pipeline.to_float(b['image'])

  def loss_fn(params, b):
    return loss_and_logits(params, state, inputs(b), b['label'])[0]

  params, opt_state, sparsity, info = rewiring.rewire(
    state.params,
    state.opt_state,
    state.sparsity,
    batch,
    rng,
    spec=spec,
    tx=state.tx,
    step=state.step,
    apply_fn=state.apply_fn,
    inputs=inputs,
    loss_fn=loss_fn,
  )
  return state.replace(params=params, opt_state=opt_state, sparsity=sparsity), info


def grad_norm(state: TrainState, batch: dict):
  """The global norm of the masked gradient on a batch of uint8 images (unaugmented): the
  training records' l2_grads, at the params an epoch ends with, on its last batch."""
  images = input_pipeline.to_float(batch['image'])
  grads = jax.grad(lambda p: loss_and_logits(p, state, images, batch['label'])[0])(state.params)
  return optax.global_norm(apply_masks(grads, state.sparsity.masks))


def eval_step(state: TrainState, batch: dict):
  """Sums of loss and correct predictions over the examples with weight 1."""
  images = input_pipeline.to_float(batch['image'])
  logits = state.apply_fn(state.variables(), images)
  losses = optax.softmax_cross_entropy_with_integer_labels(logits, batch['label'])
  correct = jnp.argmax(logits, -1) == batch['label']
  w = batch['weight']
  return {'loss': jnp.sum(losses * w), 'correct': jnp.sum(correct * w), 'count': jnp.sum(w)}


def evaluate(state: TrainState, images, labels, batch_size: int) -> dict:
  """Loss and accuracy over a whole split, per seed for stacked states (arrays [seeds])."""
  eval_fn = jax.jit(replicas.over_seeds(eval_step, int(np.size(state.step)), in_axes=(0, None)))
  return runners.evaluate_split(eval_fn, state, images, labels, batch_size)


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
  with contextlib.closing(ckpt_lib.Checkpointer(workdir)) as ckpt:  # no mesh: a run loads on any machine
    restored = ckpt.restore(init_state(parse_config(config, check_devices=False)))
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


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str, *, start_over: bool = False) -> dict[str, Any]:
  """Trains and evaluates as the config says; resumes from the workdir's checkpoint.

  Returns the last evaluation record (the last evaluation line of WORKDIR/metrics.jsonl), or
  {'step': s, 'halted': True} when config.halt_after_steps stopped the run at step s. A signal
  (SIGTERM, SIGINT, SIGHUP) saves a checkpoint at the next step boundary and raises
  interrupts.Stopped. start_over trains a workdir whose records have no checkpoint again from
  step 0, its earlier records moved to WORKDIR/earlier/.
  """
  spec = parse_config(config)
  config_dict = json.loads(config.to_json())
  workdir = workdir_lib.check_path(workdir)
  if os.path.isdir(workdir):  # fail before loading anything
    check_same_run(ckpt_lib.saved_config(workdir), config_dict, workdir)
  dataset = data_lib.check_sizes(data_lib.load_dataset(spec.data), spec.data.info)
  mesh = make_mesh(spec.num_devices)
  state = init_state(spec)
  seeds, spe, plan = spec.num_seeds, spec.steps_per_epoch, spec.schedule()
  accts = [
    conn.accounting(s.params, s.sparsity.masks, spec.model.runs, spec.model.head, s.sparsity.layout)
    for s in replicas.each(state)
  ]
  _log_setup(spec, dataset, accts[0], mesh)
  state = jax.device_put(state, NamedSharding(mesh, P()))
  identity = dataset.identity()
  with lifecycle.open_run(workdir, config_dict, identity, state, num_seeds=seeds, start_over=start_over) as run:
    state, step, best, writer = run.state, run.step, run.best, run.writer
    if step >= spec.total_steps:
      logging.info('run already finished (step %d of %d): nothing to train', step, spec.total_steps)
      return _result(writer.records(), step, spec.total_steps)
    runner = runners.RUNNERS[spec.loop](
      spec,
      mesh,
      dataset,
      state,
      steps=runners.Steps(train_step, eval_step, grad_norm, update_masks),
      should_stop=run.stop_now,
    )
    compile_seconds = sum(runner.compile_seconds.values())
    logging.info(
      'compiled in %.2fs: %s', compile_seconds, ', '.join(f'{k} {v:.2f}s' for k, v in runner.compile_seconds.items())
    )
    if spec.rewiring.enabled:
      logging.info('rewiring: %s', spec.rewiring.summary())
    progress = metrics_lib.Progress(spec.progress if hosts.is_primary() else 'none')
    sums = metrics_lib.EpochSums(seeds, **run.epoch_sums) if step % spe else metrics_lib.EpochSums(seeds)
    while step < plan.end(step):
      first, t0, rewire_seconds = step, time.perf_counter(), 0.0
      progress.start_epoch()
      while True:  # one epoch, or what is left of it
        state, metrics = runner.run_chunk(state, step, plan.next_chunk(step))
        step += len(metrics['loss'])
        bad = sums.add(metrics, step, spec.batch_size)
        if bad is not None:
          raise run.diverged('training loss', *bad)
        epoch = (step - 1) // spe
        examples = (step - first) * spec.batch_size * seeds
        progress.update(epoch + 1, step - epoch * spe, spe, sums.mean_loss(), sums.mean_accuracy(), examples)
        if plan.rewire(step):
          state, info, seconds = runner.rewire(state, step)
          rewire_seconds += seconds
          record, line = metrics_lib.rewire_record(step, seconds, info, seeds)
          writer.write(record)
          logging.info('%s', line)
        stopping = run.stop_now()
        if plan.epoch_end(step) or plan.halt(step) or stopping:
          break
      sums.seconds += time.perf_counter() - t0
      progress.end_epoch()
      if plan.evaluate(step):
        test = runner.evaluate(state)
        if not np.all(np.isfinite(test['loss'])):
          k = int(np.argmin(np.isfinite(test['loss'])))
          raise run.diverged('test loss', test['loss'][k], step, k)
        best = np.maximum(best, test['accuracy'])
        sums.norms['l2_grads'] = runner.grad_norm(state, step).tolist()
        record = _eval_record(spec, step, sums, test, best, accts, dataset, rewire_seconds)
        if compile_seconds:  # the first evaluation after this process compiled
          record['compile_seconds'], compile_seconds = compile_seconds, 0.0
        writer.write(record)
        logging.info('%s', metrics_lib.eval_line(record))
      if plan.checkpoint(step) or stopping:
        run.save(step, state, sums if step % spe else metrics_lib.EpochSums(seeds), best)
      if stopping:
        raise run.stopped(step)
      if plan.halt(step):
        break
      sums = metrics_lib.EpochSums(seeds)
    return _result(writer.records(), step, spec.total_steps)


def _eval_record(spec: RunSpec, step, sums, test, best, accts, dataset, rewire_seconds) -> dict:
  """The record of an evaluation at `step`: the epoch's training sums, the test metrics, the
  accounting, and what the epoch cost (mask updates apart)."""
  record = metrics_lib.eval_record(
    step=step,
    epoch=step // spec.steps_per_epoch,
    sums=sums,
    test=test,
    best=best,
    accts=accts,
    data_source=dataset.source,
    learning_rate=float(optim.make_schedule(spec.optim, spec.total_steps)(step)),
    # Throughput over all replicas: examples trained on per second of training.
    examples_per_sec=sums.count * spec.num_seeds / max(sums.seconds - rewire_seconds, 1e-9),
    epoch_seconds=sums.seconds,
  )
  if spec.rewiring.enabled:
    record['rewire_seconds'] = rewire_seconds
    record['rewire_time_share'] = rewire_seconds / max(sums.seconds, 1e-9)
  return record


def _result(records: list[dict], step: int, total_steps: int) -> dict:
  """What train_and_evaluate returns: the last evaluation record, or {'step', 'halted'} for a run
  that config.halt_after_steps stopped before its end."""
  if step < total_steps:
    logging.info('halted at step %d (config.halt_after_steps); rerun the command to resume', step)
    return {'step': step, 'halted': True}
  evals = metrics_lib.eval_records(records)
  return evals[-1] if evals else {'step': step}
