"""Train-step speed, side by side in one run: sparse layers, the Mixer, and the NNX face.

  python experiments/bench/bench.py                     # layers: dense, masked, tiles at widths 1024, 4096
  python experiments/bench/bench.py --suite=mixer       # the Mixer's GFLOP/s against G2GNet FC v2's
  python experiments/bench/bench.py --suite=nnx         # an NNX model with G2G masks against train_step
  python experiments/bench/bench.py --widths=256 --steps=3 --repeats=1   # a quick check

`layers`: for each width, three G2GNet models that differ only in their hidden layers:
`dense` (FC, connectivity.kind='dense'), `masked` (G2G, p = 1, p' = 0.15, scattered inter
edges, a dense kernel whose pruned weights are 0) and `tiles` (the same G2G density as tiles,
connectivity.inter='tiles'), each through the real jitted train_step.

`mixer`: the dense and G2G Mixers of configs/cifar10_mixer.py (fc_v2, g2g) and the G2GNet
FC v2 of configs/fashion_mnist.py, each through train_step as its run calls it
(num_microbatches included). GFLOP/s counts forward + backward as 3x the forward FLOPs the
run logs (kernels only).

`nnx`: for each width, G2GNet with G2G masks as the Linen model through train_step and through
`linen_same_work` (train_step less its accuracy and norms: the NNX step's work), and the same
network written as an nnx.Module (sparse_nnx masks, nnx.Optimizer, the same params and masks;
a first-step loss that differs from Linen's is printed) through three NNX steps: `nnx.jit` on
the module, `nnx.cached_partial`, and jax.jit over nnx.split / nnx.merge.

Variants are timed in turns (a, b, c, a, ...), `repeats` rounds of `steps` steps each on one
fixed batch, and the median round is reported. Prints a table, then one JSON line.
"""

import dataclasses
import functools
import json
import statistics
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl import app, flags
from flax import nnx

sys.path.insert(0, __file__.rsplit('/experiments/', 1)[0])
from configs import cifar10_mixer, default, fashion_mnist  # noqa: E402
from g2g_jax import config as config_lib  # noqa: E402
from g2g_jax import connectivity as conn  # noqa: E402
from g2g_jax import input_pipeline, sparse_nnx, train  # noqa: E402
from g2g_jax.state import apply_masks  # noqa: E402

_SUITE = flags.DEFINE_enum('suite', 'layers', ['layers', 'mixer', 'nnx'], 'What to measure.')
_WIDTHS = flags.DEFINE_list('widths', ['1024', '4096'], 'Hidden widths (layers, nnx).')
_BATCH = flags.DEFINE_integer('batch_size', 256, 'Examples per step.')
_STEPS = flags.DEFINE_integer('steps', 10, 'Steps per timed round.')
_REPEATS = flags.DEFINE_integer('repeats', 5, 'Timed rounds per variant (median reported).')
_TILE = flags.DEFINE_integer('tile_size', 0, 'Tile side for the tiled variant; 0 = one tile per group side.')

LAYER_VARIANTS = {
  'dense': {'connectivity.kind': 'dense'},
  'masked': {'connectivity.kind': 'g2g', 'connectivity.inter': 'bernoulli'},
  'tiles': {'connectivity.kind': 'g2g', 'connectivity.inter': 'tiles'},
}


def _set(config, overrides: dict):
  for path, value in overrides.items():
    section, field = path.split('.')
    config[section][field] = value
  return config


def layer_config(width: int, variant: str):
  config = default.get_config('g2g')
  config.data.name = 'fashion_mnist'
  config.model.hidden_width = width
  config.connectivity.grouping = 'index'
  config.connectivity.tile_size = _TILE.value
  return _set(config, LAYER_VARIANTS[variant])


def _batch(image_shape):
  rng = np.random.default_rng(0)
  return {
    'image': rng.integers(0, 256, (_BATCH.value, *image_shape), dtype=np.uint8),
    'label': rng.integers(0, 10, _BATCH.value).astype(np.int32),
  }


def _on(step, batch):
  """state -> step(state, batch): one variant's timed call."""
  return lambda state: step(state, batch)


def linen_variant(config) -> dict:
  """The run's jitted train_step on one fixed batch, with the run's forward FLOPs per example."""
  config.data.source = 'synthetic'
  config.batch_size = _BATCH.value
  spec = config_lib.parse_config(config)
  state = train.init_state(spec)
  acct = conn.accounting(state.params, state.sparsity.masks, spec.model.runs, spec.model.head, state.sparsity.layout)
  step = functools.partial(
    train.train_step,
    augment='none',
    crop_padding=0,
    num_microbatches=spec.num_microbatches,
  )
  step = jax.jit(step, donate_argnums=0)
  batch = jax.device_put(_batch(spec.data.info.image_shape))
  state, m = step(state, batch)  # compile
  jax.block_until_ready(m)
  return {
    'run': _on(step, batch),
    'step': step,
    'batch': batch,
    'state': state,
    'acct': acct,
    'first_loss': float(m['loss']),
  }


def time_round(v: dict) -> float:
  state = v['state']
  t0 = time.perf_counter()
  for _ in range(_STEPS.value):
    state, out = v['run'](state)
  jax.block_until_ready(out)
  v['state'] = state
  return (time.perf_counter() - t0) / _STEPS.value


def timed(variants: dict) -> dict:
  """The median seconds per step of each variant, timed in turns."""
  rounds = {name: [] for name in variants}
  for _ in range(_REPEATS.value):
    for name, v in variants.items():
      rounds[name].append(time_round(v))
  return {name: (statistics.median(r), r) for name, r in rounds.items()}


# ---------------------------------------------------------------------------------
# layers


def suite_layers() -> list[dict]:
  results = []
  for width in map(int, _WIDTHS.value):
    built = {name: linen_variant(layer_config(width, name)) for name in LAYER_VARIANTS}
    times = timed(built)
    for name, v in built.items():
      s, rounds = times[name]
      results.append(
        {
          'width': width,
          'variant': name,
          'step_ms': 1000 * s,
          'examples_per_sec': _BATCH.value / s,
          'speedup_vs_dense': times['dense'][0] / s,
          'density': v['acct']['density'],
          'head_params': v['acct']['head_params'],
          'rounds_ms': [1000 * r for r in rounds],
        }
      )
  print(f'{"width":>6} {"variant":>8} {"density":>8} {"step ms":>9} {"ex/s":>9} {"x dense":>8}')
  for r in results:
    print(
      f'{r["width"]:6d} {r["variant"]:>8} {r["density"]:8.4f} {r["step_ms"]:9.2f} '
      f'{r["examples_per_sec"]:9.0f} {r["speedup_vs_dense"]:8.2f}'
    )
  return results


# ---------------------------------------------------------------------------------
# mixer

MIXER_VARIANTS = {
  'G2GNet FC v2': lambda: fashion_mnist.get_config('fc_v2'),
  'Mixer dense': lambda: cifar10_mixer.get_config('fc_v2'),
  'Mixer G2G': lambda: cifar10_mixer.get_config('g2g'),
}


def suite_mixer() -> list[dict]:
  built = {name: linen_variant(make()) for name, make in MIXER_VARIANTS.items()}
  times = timed(built)
  results = []
  for name, v in built.items():
    s, rounds = times[name]
    flops = 3 * v['acct']['flops_per_example'] * _BATCH.value  # forward + backward
    results.append(
      {
        'variant': name,
        'step_ms': 1000 * s,
        'gflops_per_step': flops / 1e9,
        'gflop_per_s': flops / s / 1e9,
        'rounds_ms': [1000 * r for r in rounds],
      }
    )
  mlp = results[0]['gflop_per_s']
  print(f'{"variant":>14} {"step ms":>9} {"GFLOP/step":>11} {"GFLOP/s":>8} {"x FC v2 rate":>13}')
  for r in results:
    r['rate_vs_fc_v2'] = r['gflop_per_s'] / mlp
    print(
      f'{r["variant"]:>14} {r["step_ms"]:9.2f} {r["gflops_per_step"]:11.3f} {r["gflop_per_s"]:8.1f} '
      f'{r["rate_vs_fc_v2"]:13.2f}'
    )
  return results


# ---------------------------------------------------------------------------------
# nnx


class NNXG2GNet(nnx.Module):
  """models.G2GNet (patch_major features, plain Dense hidden layers) as an nnx.Module."""

  def __init__(self, spec, *, rngs: nnx.Rngs):
    h, w, c = spec.data.info.image_shape
    m = spec.model
    self.grid = m.patch_grid
    ph, pw = h // m.patch_grid, w // m.patch_grid
    self.conv = nnx.Conv(c, m.patch_channels, kernel_size=(ph, pw), strides=(ph, pw), padding='VALID', rngs=rngs)
    sizes = [m.num_features, *m.widths]
    self.hidden = nnx.List([nnx.Linear(a, b, rngs=rngs) for a, b in zip(sizes[:-1], sizes[1:], strict=True)])
    self.output = nnx.Linear(sizes[-1], m.num_classes, rngs=rngs)

  def __call__(self, images):
    x = nnx.relu(self.conv(images)).reshape(images.shape[0], -1)
    for layer in self.hidden:
      x = nnx.relu(layer(x))
    return self.output(x)


def _loss(model, images, labels):
  return optax.softmax_cross_entropy_with_integer_labels(model(images), labels).mean()


def nnx_step(model, optimizer, batch, key):
  """The NNX train step: preprocess as train_step does, masked gradients, Adam, zero the pruned."""
  images = input_pipeline.preprocess(key, batch['image'], 'none', 0)
  loss, grads = nnx.value_and_grad(_loss)(model, images, batch['label'])
  optimizer.update(model, sparse_nnx.masked(grads, model))
  sparse_nnx.zero_pruned(model)
  return loss


def linen_same_work(state, batch):
  """train_step less its diagnostics (accuracy, norms): the work nnx_step does, in Linen."""
  images = input_pipeline.preprocess(jax.random.fold_in(state.key, state.step), batch['image'], 'none', 0)
  loss, grads = jax.value_and_grad(lambda p: train.loss_and_logits(p, state, images, batch['label'])[0])(state.params)
  updates, opt_state = state.tx.update(apply_masks(grads, state.sparsity.masks), state.opt_state, state.params)
  params = apply_masks(optax.apply_updates(state.params, updates), state.sparsity.masks)
  return state.replace(step=state.step + 1, params=params, opt_state=opt_state), loss


def nnx_model(spec, linen_state):
  """The NNX twin of the Linen run: its params and masks copied in."""
  model = NNXG2GNet(spec, rngs=nnx.Rngs(0))
  sparse_nnx.sparsify(model, dataclasses.replace(spec.connectivity, sparse_kernels='hidden/*/kernel'), spec.seed)
  p = jax.tree.map(jnp.copy, linen_state.params)  # copies: a donating step deletes its inputs
  model.conv.kernel.set_value(p['encoder']['conv']['kernel'])
  model.conv.bias.set_value(p['encoder']['conv']['bias'])
  for k, layer in enumerate(model.hidden):
    layer.kernel.set_value(p['head'][f'hidden_{k}']['kernel'])
    layer.bias.set_value(p['head'][f'hidden_{k}']['bias'])
    layer.kernel_mask.set_value(jnp.copy(linen_state.sparsity.masks['head'][f'hidden_{k}']['kernel']))
  model.output.kernel.set_value(p['head']['output']['kernel'])
  model.output.bias.set_value(p['head']['output']['bias'])
  return model, linen_state.tx  # the run's optimizer


def nnx_variants(spec, linen_state, batch) -> dict:
  key = jax.random.fold_in(linen_state.key, linen_state.step)  # train_step's key at its step
  variants = {}

  model, tx = nnx_model(spec, linen_state)
  optimizer = nnx.Optimizer(model, tx, wrt=nnx.Param)
  jitted = nnx.jit(nnx_step, donate_argnums=(0, 1))
  variants['nnx.jit'] = {'run': lambda s: (s, jitted(*s, batch, key)), 'state': (model, optimizer)}

  model, tx = nnx_model(spec, linen_state)
  optimizer = nnx.Optimizer(model, tx, wrt=nnx.Param)
  cached = nnx.cached_partial(nnx.jit(nnx_step), model, optimizer)
  variants['nnx.cached_partial'] = {'run': lambda s: (s, cached(batch, key)), 'state': None}

  model, tx = nnx_model(spec, linen_state)
  optimizer = nnx.Optimizer(model, tx, wrt=nnx.Param)
  graphdef, state = nnx.split((model, optimizer))

  @functools.partial(jax.jit, donate_argnums=0)
  def pure(state, batch):
    m, o = nnx.merge(graphdef, state)
    loss = nnx_step(m, o, batch, key)
    return nnx.state((m, o)), loss

  variants['split/merge + jax.jit'] = {'run': lambda s: pure(s, batch), 'state': state}
  for v in variants.values():
    v['state'], loss = v['run'](v['state'])  # compile
    v['first_loss'] = float(loss)
  return variants


def suite_nnx() -> list[dict]:
  results = []
  for width in map(int, _WIDTHS.value):
    config = layer_config(width, 'masked')
    linen = linen_variant(config)  # it has taken one step: the others start from a fresh state
    spec, batch = config_lib.parse_config(config), linen['batch']
    plain = {'run': _on(jax.jit(linen_same_work, donate_argnums=0), batch), 'state': train.init_state(spec)}
    plain['state'], loss = plain['run'](plain['state'])  # compile
    plain['first_loss'] = float(loss)
    built = {'linen train_step': linen, 'linen, same work': plain, **nnx_variants(spec, train.init_state(spec), batch)}
    for name, v in built.items():
      if v['first_loss'] != linen['first_loss']:
        print(f'  note: {name} first-step loss {v["first_loss"]!r} vs Linen {linen["first_loss"]!r}')
    times = timed(built)
    for name in built:
      s, rounds = times[name]
      results.append(
        {
          'width': width,
          'variant': name,
          'step_ms': 1000 * s,
          'x_linen': s / times['linen train_step'][0],
          'x_linen_same_work': s / times['linen, same work'][0],
          'first_loss': built[name]['first_loss'],
          'rounds_ms': [1000 * r for r in rounds],
        }
      )
  print(f'{"width":>6} {"variant":>22} {"step ms":>9} {"x train_step":>13} {"x same work":>12}')
  for r in results:
    print(f'{r["width"]:6d} {r["variant"]:>22} {r["step_ms"]:9.2f} {r["x_linen"]:13.3f} {r["x_linen_same_work"]:12.3f}')
  return results


def main(argv):
  del argv
  print(f'JAX {jax.__version__}, backend {jax.default_backend()}, devices {jax.devices()}')
  print(f'suite {_SUITE.value}, batch {_BATCH.value}, {_STEPS.value} steps x {_REPEATS.value} rounds')
  results = {'layers': suite_layers, 'mixer': suite_mixer, 'nnx': suite_nnx}[_SUITE.value]()
  print(
    json.dumps(
      {'suite': _SUITE.value, 'backend': jax.default_backend(), 'device': str(jax.devices()[0]), 'results': results}
    )
  )


if __name__ == '__main__':
  app.run(main)
