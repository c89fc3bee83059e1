"""Turns a ConfigDict into validated, frozen specs: the only place that reads configs.

Library functions take these specs or plain arguments, never a ConfigDict. Every check
runs before anything is compiled or written, and a failure names the field, the value
and what is allowed.
"""

import dataclasses
import math
from typing import Any

import ml_collections

from g2g_jax import connectivity as conn
from g2g_jax import data as data_lib
from g2g_jax import models, optim, rewiring, tiles, xla_cpu

PROGRESS = ('auto', 'bar', 'lines', 'none')
LOOPS = ('auto', 'steps', 'scan')
SEED_LAYOUTS = ('auto', 'vmap', 'unroll', 'sequential')
WIDTH_RULES = ('fixed', 'match_g2g_params')
# Fields that may differ when a run is resumed: they change how it runs, not what it computes.
RUNTIME_FIELDS = (
  'halt_after_steps',
  'progress',
  'log_every_steps',
  'num_devices',
  'loop',
  'seed_layout',
  'cpu_dots',
  'data.dir',
  'data.tfds_data_dir',
  'data.download',
  'data.source',
)


class ConfigError(ValueError):
  """An invalid config value: the message names the field, the value and what is allowed."""


@dataclasses.dataclass(frozen=True)
class DataSpec:
  name: str
  source: str
  dir: str
  tfds_data_dir: str
  download: bool
  augment: str  # resolved: 'none' | 'crop_flip'
  crop_padding: int
  synthetic: data_lib.SyntheticSpec
  info: data_lib.DatasetInfo


@dataclasses.dataclass(frozen=True)
class Experiment:
  seed: int
  num_epochs: int
  batch_size: int
  eval_batch_size: int
  eval_every_epochs: int
  checkpoint_every_epochs: int
  log_every_steps: int
  halt_after_steps: int
  num_devices: int  # resolved: > 0
  progress: str
  num_seeds: int  # independent replicas trained together, seeds seed .. seed + num_seeds - 1
  seed_layout: str  # 'auto' | 'vmap' | 'unroll' | 'sequential'
  loop: str  # 'auto' | 'steps' | 'scan'
  cpu_dots: str  # 'auto' | 'xla' | 'eigen' (resolved on the backend by xla_cpu.compiler_options)
  data: DataSpec
  model: models.G2GNet
  connectivity: conn.ConnectivitySpec
  optim: optim.OptimSpec
  rewiring: rewiring.RewireSpec  # groups and end_steps are filled in by the loop

  @property
  def num_patches(self) -> int:
    return self.model.grid**2


def _fail(field: str, value: Any, allowed: str):
  raise ConfigError(f'config.{field} = {value!r}: {allowed}')


def _int(c, field: str, lo: int = None, hi: int = None) -> int:
  value = _get(c, field)
  if isinstance(value, bool) or not isinstance(value, int):
    _fail(field, value, 'must be an integer')
  if (lo is not None and value < lo) or (hi is not None and value > hi):
    rng = f'>= {lo}' if hi is None else f'in [{lo}, {hi}]'
    _fail(field, value, f'must be an integer {rng}')
  return value


def _float(c, field: str, lo: float = None, hi: float = None, lo_open: bool = False) -> float:
  value = _get(c, field)
  if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
    _fail(field, value, 'must be a finite number')
  if lo is not None and (value < lo or (lo_open and value == lo)):
    _fail(field, value, f'must be {">" if lo_open else ">="} {lo}' + (f' and <= {hi}' if hi is not None else ''))
  if hi is not None and value > hi:
    _fail(field, value, f'must be in [{lo}, {hi}]')
  return float(value)


def _choice(c, field: str, allowed) -> str:
  value = _get(c, field)
  if value not in allowed:
    _fail(field, value, f'must be one of {", ".join(repr(a) for a in allowed)}')
  return value


def _get(c, field: str):
  for part in field.split('.'):
    c = c[part]
  return c


def _divisible(field: str, value: int, by: int, what: str):
  if value % by:
    _fail(field, value, f'must be divisible by {what} ({by})')


def parse_config(config: ml_collections.ConfigDict, num_available_devices: int) -> Experiment:
  """Validates every field and returns the specs the library runs on."""
  c = config
  seed = _int(c, 'seed', 0)
  num_devices = _int(c, 'num_devices', 0, num_available_devices) or num_available_devices
  batch_size = _int(c, 'batch_size', 1)
  eval_batch_size = _int(c, 'eval_batch_size', 1)
  _divisible('batch_size', batch_size, num_devices, 'the number of devices')
  _divisible('eval_batch_size', eval_batch_size, num_devices, 'the number of devices')

  name = _choice(c, 'data.name', tuple(data_lib.DATASETS))
  synthetic = data_lib.SyntheticSpec(
    num_train=_int(c, 'data.synthetic_num_train', 1),
    num_test=_int(c, 'data.synthetic_num_test', 1),
    image_size=_int(c, 'data.synthetic_image_size', 1),
    channels=_int(c, 'data.synthetic_channels', 1),
    num_classes=_int(c, 'data.synthetic_num_classes', 2),
  )
  info = data_lib.dataset_info(name, synthetic)
  source = _choice(c, 'data.source', data_lib.SOURCES)
  if name == 'synthetic' and source not in ('auto', 'synthetic'):
    _fail('data.source', source, "must be 'auto' or 'synthetic' for data.name = 'synthetic'")
  augment = _choice(c, 'data.augment', data_lib.AUGMENTS)
  data = DataSpec(
    name=name,
    source=source,
    dir=str(_get(c, 'data.dir')),
    tfds_data_dir=str(_get(c, 'data.tfds_data_dir')),
    download=bool(_get(c, 'data.download')),
    augment=info.augment if augment == 'auto' else augment,
    crop_padding=_int(c, 'data.crop_padding', 0),
    synthetic=synthetic,
    info=info,
  )
  num_train = synthetic.num_train if source == 'synthetic' else info.num_train
  if batch_size > num_train:
    _fail('batch_size', batch_size, f'must be <= the training set size ({num_train})')

  grid = _int(c, 'model.patch_grid', 1)
  height, width = info.image_shape[:2]
  if height % grid or width % grid:
    _fail('model.patch_grid', grid, f'must divide the image size {height}x{width}')
  channels = _int(c, 'model.patch_channels', 1)
  num_features = grid * grid * channels
  hidden_width = _int(c, 'model.hidden_width', 1)
  num_hidden = _int(c, 'model.num_hidden', 1)
  width_rule = _choice(c, 'model.width_rule', WIDTH_RULES)

  kind = _choice(c, 'connectivity.kind', conn.KINDS)
  spec = conn.ConnectivitySpec(
    kind=kind,
    grouping=_choice(c, 'connectivity.grouping', conn.GROUPINGS),
    num_groups=_int(c, 'connectivity.num_groups', 1),
    p_intra=_float(c, 'connectivity.p_intra', 0.0, 1.0),
    p_inter=_float(c, 'connectivity.p_inter', 0.0, 1.0),
    inter=_choice(c, 'connectivity.inter', tiles.INTERS),
    tile_size=_int(c, 'connectivity.tile_size', 0),
    tile_density=_float(c, 'connectivity.tile_density', 0.0, 1.0, lo_open=True),
  )
  if width_rule == 'match_g2g_params':
    g2g_density = conn.expected_density(spec.num_groups, spec.p_intra, spec.p_inter)
    target = conn.mlp_param_count(num_features, [hidden_width] * num_hidden, info.num_classes, g2g_density)
    widths = (conn.param_matched_width(num_features, num_hidden, info.num_classes, target),) * num_hidden
  else:
    widths = (hidden_width,) * num_hidden
  if kind == 'g2g':
    what = 'connectivity.num_groups'
    _divisible('model.patch_grid**2 * model.patch_channels (the feature count)', num_features, spec.num_groups, what)
    if width_rule == 'fixed':
      _divisible('model.hidden_width', hidden_width, spec.num_groups, what)
  tile_plans = ()
  if spec.inter == 'tiles':
    if kind != 'g2g':
      _fail('connectivity.inter', 'tiles', f"needs connectivity.kind = 'g2g', not {kind!r}")
    sizes = [num_features, *widths]
    for k, (n_in, n_out) in enumerate(zip(sizes[:-1], sizes[1:], strict=True)):
      why = tiles.check_sizes(n_in, n_out, spec.num_groups, spec.tile_size)
      if why:
        _fail('connectivity.tile_size', spec.tile_size, f'does not tile hidden_{k}: {why}')
    tile_plans = tuple(
      tiles.plan_layer(n_in, n_out, k, spec, seed)
      for k, (n_in, n_out) in enumerate(zip(sizes[:-1], sizes[1:], strict=True))
    )
  model = models.G2GNet(
    widths=widths,
    num_classes=info.num_classes,
    grid=grid,
    channels=channels,
    order=_choice(c, 'model.feature_order', models.ORDERS),
    kernel_init=_choice(c, 'model.kernel_init', tuple(models.KERNEL_INITS)),
    tile_plans=tile_plans,
  )

  optim_spec = optim.OptimSpec(
    optimizer=_choice(c, 'optim.optimizer', optim.OPTIMIZERS),
    learning_rate=_float(c, 'optim.learning_rate', 0.0, lo_open=True),
    weight_decay=_float(c, 'optim.weight_decay', 0.0),
    schedule=_choice(c, 'optim.schedule', optim.SCHEDULES),
    warmup_steps=_int(c, 'optim.warmup_steps', 0),
    b1=_float(c, 'optim.b1', 0.0, 1.0),
    b2=_float(c, 'optim.b2', 0.0, 1.0),
    eps=_float(c, 'optim.eps', 0.0, lo_open=True),
  )

  rewire = rewiring.RewireSpec(
    prune=_choice(c, 'rewiring.prune', rewiring.PRUNE),
    grow=_choice(c, 'rewiring.grow', rewiring.GROW),
    fraction=_float(c, 'rewiring.fraction', 0.0, 1.0, lo_open=True),
    fraction_schedule=_choice(c, 'rewiring.fraction_schedule', rewiring.FRACTION_SCHEDULES),
    every_steps=_int(c, 'rewiring.rewire_every_steps', 1),
    start_steps=_int(c, 'rewiring.rewire_start_steps', 0),
    end_steps=_int(c, 'rewiring.rewire_end_steps', 0),
    candidates=_choice(c, 'rewiring.candidates', rewiring.CANDIDATES),
    hebbian_batches=_int(c, 'rewiring.hebbian_batches', 1),
    reset_optimizer_state=bool(_get(c, 'rewiring.reset_optimizer_state')),
  )
  if (rewire.prune == 'none') != (rewire.grow == 'none'):
    field, value = ('rewiring.grow', rewire.grow) if rewire.grow == 'none' else ('rewiring.prune', rewire.prune)
    _fail(field, value, "must be set too: rewiring runs when prune and grow are both not 'none'")
  if rewire.enabled and kind == 'dense':
    _fail('rewiring.prune', rewire.prune, "must be 'none' with connectivity.kind = 'dense' (nothing to rewire)")
  if rewire.enabled and rewire.candidates == 'same_kind' and kind != 'g2g':
    _fail('rewiring.candidates', 'same_kind', f"needs connectivity.kind = 'g2g' (groups), not {kind!r}")
  if rewire.end_steps and rewire.end_steps < rewire.start_steps:
    _fail(
      'rewiring.rewire_end_steps',
      rewire.end_steps,
      f'must be 0 or >= rewiring.rewire_start_steps ({rewire.start_steps})',
    )

  return Experiment(
    seed=seed,
    num_epochs=_int(c, 'num_epochs', 1),
    batch_size=batch_size,
    eval_batch_size=eval_batch_size,
    eval_every_epochs=_int(c, 'eval_every_epochs', 1),
    checkpoint_every_epochs=_int(c, 'checkpoint_every_epochs', 1),
    log_every_steps=_int(c, 'log_every_steps', 1),
    halt_after_steps=_int(c, 'halt_after_steps', 0),
    num_devices=num_devices,
    progress=_choice(c, 'progress', PROGRESS),
    loop=_choice(c, 'loop', LOOPS),
    cpu_dots=_choice(c, 'cpu_dots', xla_cpu.CPU_DOTS),
    num_seeds=_int(c, 'num_seeds', 1),
    seed_layout=_choice(c, 'seed_layout', SEED_LAYOUTS),
    data=data,
    model=model,
    connectivity=spec,
    optim=optim_spec,
    rewiring=rewire,
  )


def changed_fields(old: dict, new: dict, prefix: str = '') -> dict[str, tuple[Any, Any]]:
  """{dotted field: (old, new)} where two config dicts differ, runtime fields excepted."""
  out = {}
  for key in sorted(set(old) | set(new)):
    field = prefix + key
    a, b = old.get(key), new.get(key)
    if isinstance(a, dict) and isinstance(b, dict):
      out.update(changed_fields(a, b, field + '.'))
    elif a != b and field not in RUNTIME_FIELDS:
      out[field] = (a, b)
  return out


def config_differences(old: dict, new: dict) -> list[str]:
  """'field: old -> new' for each field where two config dicts differ, runtime fields excepted."""
  return [f'{field}: {a!r} -> {b!r}' for field, (a, b) in changed_fields(old, new).items()]
