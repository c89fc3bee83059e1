import functools
import json
import os

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from g2g_jax import checkpoint as ckpt_lib
from g2g_jax import data as data_lib
from g2g_jax import metrics as metrics_lib
from g2g_jax import train


def final_states(config, workdir):
  """The states saved by the last checkpoint of a run (seed-stacked if num_seeds > 1)."""
  ckpt = ckpt_lib.Checkpointer(workdir)
  template = train.make_train_states(config) if config.num_seeds > 1 else train.make_train_state(config)
  states, _ = ckpt.restore(template)
  ckpt.close()
  return states


def final_state(config, workdir, k=0):
  """Replica k of the states saved by the last checkpoint of a run."""
  states = final_states(config, workdir)
  return train.replica(states, k) if config.num_seeds > 1 else states


def records(workdir):
  return metrics_lib.read_records(workdir)


def synthetic_batches(config, n):
  ds = data_lib.load_dataset('synthetic', synthetic=data_lib.SyntheticSpec(num_train=config.batch_size * n))
  b = config.batch_size
  return [
    {'image': ds.train_images[i * b : (i + 1) * b], 'label': ds.train_labels[i * b : (i + 1) * b]} for i in range(n)
  ]


def test_pruned_weights_stay_exactly_zero_and_masks_fixed(smoke_config):
  state = train.make_train_state(smoke_config)
  masks0 = jax.tree.map(np.asarray, state.masks)
  params0 = jax.tree.map(np.asarray, state.params)
  step = jax.jit(functools.partial(train.train_step, augment='crop_flip', crop_padding=2))
  for batch in synthetic_batches(smoke_config, 40):
    state, m = step(state, batch)
  assert np.isfinite(m['loss'])
  for k in range(3):
    kernel = np.asarray(state.params['head'][f'hidden_{k}']['kernel'])
    mask = masks0['head'][f'hidden_{k}']['kernel']
    assert 0.3 < mask.mean() < 0.6
    assert np.all(kernel[~mask] == 0.0)  # exactly zero, after 40 Adam steps with L2
    assert np.all(kernel[mask] != params0['head'][f'hidden_{k}']['kernel'][mask])  # active ones trained
    np.testing.assert_array_equal(np.asarray(state.masks['head'][f'hidden_{k}']['kernel']), mask)
  assert state.masks['head']['output']['kernel'] is None


def test_golden_first_step_loss(smoke_config):
  """Pins the numbers of one step: any change to init, masks, data or loss shows here."""
  state = train.make_train_state(smoke_config)
  batch = synthetic_batches(smoke_config, 1)[0]
  state, m = jax.jit(functools.partial(train.train_step, augment='none', crop_padding=0))(state, batch)
  _, m2 = jax.jit(functools.partial(train.train_step, augment='none', crop_padding=0))(state, batch)
  np.testing.assert_allclose([m['loss'], m2['loss']], GOLDEN_LOSSES, rtol=1e-5)


# Measured once on the CPU (jax 0.10.2); the first is close to ln(10) = 2.3026, as it should be
# for 10 balanced classes at init, and the second is lower after one Adam step.
GOLDEN_LOSSES = [2.3036830, 2.2977695]


def test_loop_traces_each_step_once(smoke_config, tmp_path, monkeypatch):
  monkeypatch.setattr(train, 'train_step', chex.assert_max_traces(train.train_step, n=1))
  monkeypatch.setattr(train, 'eval_step', chex.assert_max_traces(train.eval_step, n=1))
  smoke_config.num_epochs = 3
  result = train.train_and_evaluate(smoke_config, str(tmp_path))
  assert result['step'] == 24 and result['epoch'] == 3


def test_smoke_run_learns_and_writes_metrics(smoke_config, tmp_path):
  result = train.train_and_evaluate(smoke_config, str(tmp_path))
  rows = records(str(tmp_path))
  assert [r['epoch'] for r in rows] == [1, 2]
  for key in (
    'step',
    'epoch',
    'train_loss',
    'train_accuracy',
    'test_loss',
    'test_accuracy',
    'best_test_accuracy',
    'sparsity',
    'examples_per_sec',
  ):
    assert key in rows[-1]
  assert rows[-1] == json.loads(json.dumps(result))
  assert rows[-1]['best_test_accuracy'] == max(r['test_accuracy'] for r in rows)
  assert rows[0]['compile_seconds'] > 0 and 'compile_seconds' not in rows[1]  # compiled once, ahead
  assert rows[-1]['test_accuracy'] > 0.3  # 10 classes: chance is 0.1
  assert 0.5 < rows[-1]['sparsity'] < 0.6
  assert os.listdir(tmp_path / 'tensorboard')


def test_one_and_four_devices_agree(smoke_config, tmp_path):
  assert jax.device_count() == 4
  finals = []
  for n in (1, 4):
    smoke_config.num_devices = n
    train.train_and_evaluate(smoke_config, str(tmp_path / str(n)))
    finals.append(final_state(smoke_config, str(tmp_path / str(n))))
  chex.assert_trees_all_close(finals[0].params, finals[1].params, atol=1e-5, rtol=1e-5)
  a, b = records(str(tmp_path / '1')), records(str(tmp_path / '4'))
  assert a[-1]['test_accuracy'] == pytest.approx(b[-1]['test_accuracy'], abs=0.02)


def test_resumed_run_equals_uninterrupted(smoke_config, tmp_path):
  smoke_config.data.augment = 'crop_flip'  # per-step keys must survive the restart too
  train.train_and_evaluate(smoke_config, str(tmp_path / 'straight'))
  straight = final_state(smoke_config, str(tmp_path / 'straight'))
  drop = ('examples_per_sec', 'epoch_seconds', 'compile_seconds')
  strip = lambda rows: [{k: v for k, v in r.items() if k not in drop} for r in rows]  # noqa: E731
  for halt in (5, 8):  # mid-epoch, and at the epoch boundary
    workdir = str(tmp_path / f'halt{halt}')
    smoke_config.halt_after_steps = halt
    assert train.train_and_evaluate(smoke_config, workdir) == {'step': halt, 'halted': True}
    smoke_config.halt_after_steps = 0
    train.train_and_evaluate(smoke_config, workdir)
    resumed = final_state(smoke_config, workdir)
    chex.assert_trees_all_equal(straight.params, resumed.params)
    chex.assert_trees_all_equal(straight.opt_state, resumed.opt_state)
    assert strip(records(str(tmp_path / 'straight'))) == strip(records(workdir))


def test_finished_run_is_not_retrained(smoke_config, tmp_path, monkeypatch):
  first = train.train_and_evaluate(smoke_config, str(tmp_path))

  def must_not_run(*args, **kwargs):
    raise AssertionError('train_step called on a finished run')

  monkeypatch.setattr(train, 'train_step', must_not_run)
  again = train.train_and_evaluate(smoke_config, str(tmp_path))
  assert again == json.loads(json.dumps(first))
  assert len(records(str(tmp_path))) == 2


def test_non_finite_loss_stops_naming_the_step_and_keeps_checkpoint(smoke_config, tmp_path, monkeypatch):
  smoke_config.halt_after_steps = 8
  train.train_and_evaluate(smoke_config, str(tmp_path))
  before = records(str(tmp_path))
  good = final_state(smoke_config, str(tmp_path))
  original = train.train_step

  def poisoned(state, batch, **kw):
    state, m = original(state, batch, **kw)
    return state, {**m, 'loss': jnp.where(state.step >= 11, jnp.nan, m['loss'])}

  monkeypatch.setattr(train, 'train_step', poisoned)
  smoke_config.halt_after_steps = 0
  with pytest.raises(FloatingPointError, match=r'non-finite training loss \(nan\) at step 11.*step 8, left intact'):
    train.train_and_evaluate(smoke_config, str(tmp_path))
  assert records(str(tmp_path)) == before
  assert ckpt_lib.Checkpointer(str(tmp_path)).latest_step() == 8
  chex.assert_trees_all_equal(final_state(smoke_config, str(tmp_path)).params, good.params)


def test_changed_config_refuses_the_old_workdir(smoke_config, tmp_path):
  smoke_config.halt_after_steps = 4
  train.train_and_evaluate(smoke_config, str(tmp_path))
  smoke_config.connectivity.p_inter = 0.5
  with pytest.raises(train.ConfigError, match='connectivity.p_inter: 0.25 -> 0.5'):
    train.train_and_evaluate(smoke_config, str(tmp_path))


def test_scanned_epochs_equal_the_step_by_step_loop(smoke_config, tmp_path):
  smoke_config.data.augment = 'crop_flip'
  smoke_config.log_every_steps = 3  # chunks of 3, cut short at epoch ends and updates
  smoke_config.rewiring.prune = 'magnitude'
  smoke_config.rewiring.grow = 'hebbian'
  smoke_config.rewiring.rewire_every_steps = 5
  finals, rows = {}, {}
  for loop in ('steps', 'scan'):
    smoke_config.loop = loop
    train.train_and_evaluate(smoke_config, str(tmp_path / loop))
    finals[loop] = final_state(smoke_config, str(tmp_path / loop))
    rows[loop] = [
      {k: v for k, v in r.items() if 'sec' not in k and 'share' not in k} for r in records(str(tmp_path / loop))
    ]
  chex.assert_trees_all_close(finals['steps'].params, finals['scan'].params, atol=1e-6, rtol=1e-6)
  chex.assert_trees_all_equal(finals['steps'].masks, finals['scan'].masks)
  assert [r['step'] for r in rows['scan'] if r['kind'] == 'rewire'] == [5, 10, 15]
  for a, b in zip(rows['steps'], rows['scan'], strict=True):
    assert a.keys() == b.keys()
    for k in a:
      assert a[k] == (pytest.approx(b[k], rel=1e-5, abs=1e-6) if isinstance(b[k], float) else b[k]), k


def test_seed_replicas_equal_single_runs(smoke_config, tmp_path):
  smoke_config.num_epochs = 1
  smoke_config.data.augment = 'crop_flip'
  # Random criteria: masks depend on the keys alone, not on the last float bits that a
  # vmapped program may compute differently, so they must match exactly.
  smoke_config.rewiring.prune = 'random'
  smoke_config.rewiring.grow = 'random'
  smoke_config.rewiring.rewire_every_steps = 6
  smoke_config.connectivity.grouping = 'random'  # groups, masks, shuffles all differ by seed
  smoke_config.loop = 'steps'
  singles, alone = [], []
  for k in (0, 1):
    smoke_config.seed = k
    alone.append(train.train_and_evaluate(smoke_config, str(tmp_path / f'seed{k}')))
    singles.append(final_state(smoke_config, str(tmp_path / f'seed{k}')))
  smoke_config.seed, smoke_config.num_seeds = 0, 2
  layouts = (('vmap', 'steps'), ('unroll', 'steps'), ('sequential', 'steps'), ('sequential', 'scan'), ('vmap', 'scan'))
  for layout, loop in layouts:  # ('vmap', 'scan'): a GPU's default; masks updated every 6 steps cut chunks short
    smoke_config.seed_layout, smoke_config.loop = layout, loop
    together = train.train_and_evaluate(smoke_config, str(tmp_path / f'{layout}_{loop}'))
    stacked = final_states(smoke_config, str(tmp_path / f'{layout}_{loop}'))
    for k in (0, 1):
      replica = train.replica(stacked, k)
      chex.assert_trees_all_equal(replica.masks, singles[k].masks)
      chex.assert_trees_all_close(replica.params, singles[k].params, atol=1e-5, rtol=1e-5)
      if (layout, loop) == ('sequential', 'steps'):  # the single run's own program, replica by replica
        chex.assert_trees_all_equal(replica.params, singles[k].params)
      assert together['test_accuracy_per_seed'][k] == pytest.approx(alone[k]['test_accuracy'], abs=1e-6)
    assert together['num_seeds'] == 2
    assert together['test_accuracy'] == pytest.approx(np.mean(together['test_accuracy_per_seed']))
    assert together['test_accuracy_std'] == pytest.approx(np.std(together['test_accuracy_per_seed'], ddof=1))
  assert not np.array_equal(
    singles[0].masks['head']['hidden_0']['kernel'], singles[1].masks['head']['hidden_0']['kernel']
  )


def test_scan_chunks_tile_the_epoch():
  assert train.scan_chunk_steps(234, 50) == 39  # Fashion-MNIST at batch 256: 6 chunks an epoch
  assert train.scan_chunk_steps(195, 50) == 39  # CIFAR
  assert train.scan_chunk_steps(8, 50) == 8  # a chunk never spans two epochs
  assert train.scan_chunk_steps(8, 3) == 2
  assert train.scan_chunk_steps(233, 50) == 50  # no divisor near 50: each epoch ends in single steps


def test_scanned_run_compiles_one_chunk_program_when_chunks_tile_the_run(smoke_config, tmp_path, caplog):
  smoke_config.loop = 'scan'  # 8 steps an epoch, log_every_steps 4: chunks of 4, nothing cut short
  with caplog.at_level('INFO'):
    train.train_and_evaluate(smoke_config, str(tmp_path))
  compiled = [r.getMessage() for r in caplog.records if r.getMessage().startswith('compiled in')]
  assert len(compiled) == 1 and 'train_chunk ' in compiled[0] and 'train_chunk_1' not in compiled[0], compiled
