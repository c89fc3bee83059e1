"""Turns a ConfigDict into one complete, validated RunSpec: the only place that reads configs.

Each config section becomes its module's spec under the same field names
(`OptimSpec(**config.optim)`, checked by the rules below). Every 'auto' is resolved here,
every derived number (FC v1's width, the run's steps, the rewiring window) is computed
here, and every check runs here, before anything is loaded, compiled or written. A
failure names the field, the value and what is allowed.
"""

import dataclasses
import math
import sys
from typing import Any

import jax
import ml_collections

from g2g_jax import connectivity as conn
from g2g_jax import data as data_lib
from g2g_jax import models, optim, rewiring, schedule

PROGRESS = ('auto', 'bar', 'lines', 'none')
LOOPS = ('auto', 'steps', 'scan')
# Fields that may differ when a run is resumed: they change how it runs (where the data is looked
# for, how the work is split), never what is trained; the device count and the microbatches move
# results by rounding at most. The data found is checked by its contents (data.Dataset.identity).
RUNTIME_FIELDS = (
  'halt_after_steps',
  'num_microbatches',
  'progress',
  'log_every_steps',
  'num_devices',
  'loop',
  'data.dir',
  'data.tfds_data_dir',
  'data.download',
  'data.source',
)
# Fields that configs no longer have (deleted switches): a workdir that still lists them resumes.
RETIRED_FIELDS = ('seed_layout', 'cpu_dots')
# Fields added since runs were first written, with the value a config without them meant.
ADDED_FIELDS = {
  'connectivity.sparse_kernels': '',
  'model.kind': 'g2gnet',
  'model.mixer_blocks': 2,
  'model.mixer_channels': 128,
  'model.mixer_tokens_mlp': 64,
  'model.mixer_channels_mlp': 256,
}


class ConfigError(ValueError):
  """An invalid config value: the message names the field, the value and what is allowed."""


@dataclasses.dataclass(frozen=True)
class RunSpec:
  """A run, completely specified: what train_and_evaluate and make_train_state run on."""

  seed: int
  num_seeds: int  # independent replicas trained together, seeds seed .. seed + num_seeds - 1
  num_epochs: int
  batch_size: int
  num_microbatches: int  # the gradient is summed over this many slices of a batch, one at a time
  eval_batch_size: int
  eval_every_epochs: int
  checkpoint_every_epochs: int
  log_every_steps: int
  halt_after_steps: int
  num_devices: int  # resolved: > 0
  progress: str  # resolved: 'bar' | 'lines' | 'none'
  loop: str  # resolved: 'steps' | 'scan'
  data: data_lib.DataSpec
  model: models.ModelSpec
  connectivity: conn.ConnectivitySpec
  optim: optim.OptimSpec
  rewiring: rewiring.RewireSpec

  @property
  def steps_per_epoch(self) -> int:
    return self.data.info.num_train // self.batch_size

  @property
  def total_steps(self) -> int:
    return self.steps_per_epoch * self.num_epochs

  def schedule(self) -> schedule.Schedule:
    """When the run's events fall. A runner's chunk: the scanned chunk, or log_every_steps steps."""
    chunk = self.log_every_steps
    if self.loop == 'scan':
      chunk = schedule.scan_chunk_steps(self.steps_per_epoch, self.log_every_steps)
    return schedule.Schedule(
      steps_per_epoch=self.steps_per_epoch,
      num_epochs=self.num_epochs,
      chunk_steps=chunk,
      eval_every_epochs=self.eval_every_epochs,
      checkpoint_every_epochs=self.checkpoint_every_epochs,
      rewire_every_steps=self.rewiring.rewire_every_steps if self.rewiring.enabled else 0,
      rewire_start_steps=self.rewiring.rewire_start_steps,
      rewire_end_steps=self.rewiring.rewire_end_steps,
      halt_after_steps=self.halt_after_steps,
    )

  def _shape(self) -> str:
    if self.model.kind == 'mixer':
      return f'mixer of {self.model.num_patches} tokens x {self.model.mixer_channels} channels'
    return f'hidden widths={list(self.model.widths)}'

  def resolved(self) -> str:
    """What the config's 'auto' fields and derived numbers came to, for the log."""
    return (
      f'loop={self.loop}, progress={self.progress}, num_devices={self.num_devices}, '
      f'augment={self.data.augment}, {self._shape()}, '
      f'{self.steps_per_epoch} steps per epoch, {self.total_steps} in all'
      + (
        f', rewiring in steps [{self.rewiring.rewire_start_steps}, {self.rewiring.rewire_end_steps}]'
        if self.rewiring.enabled
        else ''
      )
    )


# ---------------------------------------------------------------------------------
# Rules: one per config field. The spec field of the same name takes the checked value.


@dataclasses.dataclass(frozen=True)
class Int:
  lo: int | None = None
  hi: int | None = None

  def check(self, field: str, value):
    if isinstance(value, bool) or not isinstance(value, int):
      _fail(field, value, 'must be an integer')
    if (self.lo is not None and value < self.lo) or (self.hi is not None and value > self.hi):
      _fail(field, value, f'must be an integer {f">= {self.lo}" if self.hi is None else f"in [{self.lo}, {self.hi}]"}')
    return value


@dataclasses.dataclass(frozen=True)
class Float:
  lo: float | None = None
  hi: float | None = None
  lo_open: bool = False  # lo itself is not allowed

  def check(self, field: str, value):
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
      _fail(field, value, 'must be a finite number')
    if self.lo is not None and (value < self.lo or (self.lo_open and value == self.lo)):
      hi = f' and <= {self.hi}' if self.hi is not None else ''
      _fail(field, value, f'must be {">" if self.lo_open else ">="} {self.lo}{hi}')
    if self.hi is not None and value > self.hi:
      _fail(field, value, f'must be in [{self.lo}, {self.hi}]')
    return float(value)


@dataclasses.dataclass(frozen=True)
class Choice:
  allowed: tuple

  def check(self, field: str, value):
    if value not in self.allowed:
      _fail(field, value, f'must be one of {", ".join(repr(a) for a in self.allowed)}')
    return value


class Bool:
  def check(self, field: str, value):
    if not isinstance(value, bool):
      _fail(field, value, 'must be True or False')
    return value


class Text:
  def check(self, field: str, value):
    if not isinstance(value, str):
      _fail(field, value, 'must be a string')
    return value


RULES = {
  '': {
    'seed': Int(0),
    'num_seeds': Int(1),
    'num_epochs': Int(1),
    'batch_size': Int(1),
    'num_microbatches': Int(1),
    'eval_batch_size': Int(1),
    'eval_every_epochs': Int(1),
    'checkpoint_every_epochs': Int(1),
    'log_every_steps': Int(1),
    'halt_after_steps': Int(0),
    'num_devices': Int(0),  # and <= the devices there are: checked in parse_config
    'progress': Choice(PROGRESS),
    'loop': Choice(LOOPS),
  },
  'data': {
    'name': Choice(tuple(data_lib.DATASETS)),
    'source': Choice(data_lib.SOURCES),
    'dir': Text(),
    'tfds_data_dir': Text(),
    'download': Bool(),
    'augment': Choice(data_lib.AUGMENTS),
    'crop_padding': Int(0),
    'synthetic_num_train': Int(1),
    'synthetic_num_test': Int(1),
    'synthetic_image_size': Int(1),
    'synthetic_channels': Int(1),
    'synthetic_num_classes': Int(2),
  },
  'model': {
    'kind': Choice(models.KINDS),
    'patch_grid': Int(1),
    'patch_channels': Int(1),
    'feature_order': Choice(models.ORDERS),
    'hidden_width': Int(1),
    'num_hidden': Int(1),
    'width_rule': Choice(models.WIDTH_RULES),
    'kernel_init': Choice(tuple(models.KERNEL_INITS)),
    'mixer_blocks': Int(1),
    'mixer_channels': Int(1),
    'mixer_tokens_mlp': Int(1),
    'mixer_channels_mlp': Int(1),
  },
  'connectivity': {
    'kind': Choice(conn.KINDS),
    'grouping': Choice(conn.GROUPINGS),
    'num_groups': Int(1),
    'p_intra': Float(0.0, 1.0),
    'p_inter': Float(0.0, 1.0),
    'inter': Choice(conn.INTERS),
    'tile_size': Int(0),
    'tile_density': Float(0.0, 1.0, lo_open=True),
    'sparse_kernels': Text(),
  },
  'optim': {
    'optimizer': Choice(optim.OPTIMIZERS),
    'learning_rate': Float(0.0, lo_open=True),
    'weight_decay': Float(0.0),
    'schedule': Choice(optim.SCHEDULES),
    'warmup_steps': Int(0),
    'b1': Float(0.0, 1.0),
    'b2': Float(0.0, 1.0),
    'eps': Float(0.0, lo_open=True),
  },
  'rewiring': {
    'prune': Choice(rewiring.PRUNE),
    'grow': Choice(rewiring.GROW),
    'fraction': Float(0.0, 1.0, lo_open=True),
    'fraction_schedule': Choice(rewiring.FRACTION_SCHEDULES),
    'rewire_every_steps': Int(1),
    'rewire_start_steps': Int(0),
    'rewire_end_steps': Int(0),
    'candidates': Choice(rewiring.CANDIDATES),
    'hebbian_batches': Int(1),
    'reset_optimizer_state': Bool(),
  },
}


def _fail(field: str, value: Any, allowed: str):
  raise ConfigError(f'config.{field} = {value!r}: {allowed}')


def _section(config: ml_collections.ConfigDict, name: str) -> dict:
  """The section's fields, each checked by its rule: {field: value}."""
  c = config[name] if name else config
  rules = RULES[name]
  prefix = f'{name}.' if name else ''
  missing = sorted(set(rules) - set(c.keys()))
  if missing:
    raise ConfigError(f'config.{prefix}{missing[0]} is missing (every field is listed in configs/default.py)')
  sections = set(RULES) if not name else set()
  unknown = sorted(set(c.keys()) - set(rules) - sections - set(RETIRED_FIELDS))
  if unknown:
    raise ConfigError(f'config.{prefix}{unknown[0]}: unknown field (every field is listed in configs/default.py)')
  return {field: rule.check(prefix + field, c[field]) for field, rule in rules.items()}


def _divisible(field: str, value: int, by: int, what: str):
  if value % by:
    _fail(field, value, f'must be divisible by {what} ({by})')


def parse_config(
  config: ml_collections.ConfigDict,
  *,
  device_count: int | None = None,
  backend: str | None = None,
  check_devices: bool = True,
) -> RunSpec:
  """Validates every field and returns the complete spec of the run.

  device_count and backend (default: JAX's) resolve num_devices = 0 and loop = 'auto';
  progress = 'auto' asks whether stderr is a terminal. check_devices = False skips what only
  training on this machine needs (the device count and the batch's split over it).
  """
  device_count = jax.device_count() if device_count is None else device_count
  backend = jax.default_backend() if backend is None else backend
  top = _section(config, '')
  if check_devices:
    if top['num_devices'] > device_count:
      _fail('num_devices', top['num_devices'], f'must be an integer in [0, {device_count}]')
    top['num_devices'] = top['num_devices'] or device_count
    _divisible('batch_size', top['batch_size'], top['num_devices'], 'the number of devices')
    _divisible('eval_batch_size', top['eval_batch_size'], top['num_devices'], 'the number of devices')
    per_slice = top['num_devices'] * top['num_microbatches']  # every slice of a batch splits over the devices
    _divisible('batch_size', top['batch_size'], per_slice, 'num_devices x num_microbatches')
  top['num_devices'] = top['num_devices'] or device_count
  if top['loop'] == 'auto':  # measured: the step loop is faster on a CPU, scanned epochs elsewhere
    top['loop'] = 'steps' if backend == 'cpu' else 'scan'
  if top['progress'] == 'auto':
    top['progress'] = 'bar' if sys.stderr.isatty() else 'lines'

  data = _parse_data(_section(config, 'data'), top['batch_size'])
  fields = _section(config, 'connectivity')
  kind = _section(config, 'model')['kind']
  fields['sparse_kernels'] = fields['sparse_kernels'] or models.SPARSE_KERNELS[kind]  # '': the model's own
  connectivity = conn.ConnectivitySpec(**fields)
  model = _parse_model(_section(config, 'model'), data.info, connectivity)
  optim_spec = optim.OptimSpec(**_section(config, 'optim'))
  total_steps = data.info.num_train // top['batch_size'] * top['num_epochs']
  rewire = _parse_rewiring(_section(config, 'rewiring'), connectivity, total_steps)
  return RunSpec(**top, data=data, model=model, connectivity=connectivity, optim=optim_spec, rewiring=rewire)


def _parse_data(fields: dict, batch_size: int) -> data_lib.DataSpec:
  if fields['name'] == 'synthetic' and fields['source'] not in ('auto', 'synthetic'):
    _fail('data.source', fields['source'], "must be 'auto' or 'synthetic' for data.name = 'synthetic'")
  spec = data_lib.DataSpec(**fields)
  if spec.augment == 'auto':
    spec = dataclasses.replace(spec, augment=spec.info.augment)
  if batch_size > spec.info.num_train:
    _fail('batch_size', batch_size, f'must be <= the training set size ({spec.info.num_train})')
  return spec


def _parse_model(fields: dict, info: data_lib.DatasetInfo, spec: conn.ConnectivitySpec) -> models.ModelSpec:
  grid, hidden_width = fields['patch_grid'], fields['hidden_width']
  height, width = info.image_shape[:2]
  if height % grid or width % grid:
    _fail('model.patch_grid', grid, f'must divide the image size {height}x{width}')
  num_features = grid * grid * fields['patch_channels']
  num_hidden = fields['num_hidden']
  widths = (hidden_width,) * num_hidden
  density = conn.expected_density(spec.num_groups, spec.p_intra, spec.p_inter)
  if fields['width_rule'] == 'match_g2g_params' and fields['kind'] == 'g2gnet':  # FC v1: G2G's expected head params
    target = conn.mlp_param_count(num_features, [hidden_width] * num_hidden, info.num_classes, density)
    widths = (conn.param_matched_width(num_features, num_hidden, info.num_classes, target),) * num_hidden
  elif fields['width_rule'] == 'match_g2g_params':  # the Mixer's: its sparse MLPs narrowed to G2G's head params
    wide = models.ModelSpec(**fields, num_classes=info.num_classes)
    if not wide.sparse_layers(spec.sparse_kernels):
      _fail('connectivity.sparse_kernels', spec.sparse_kernels, 'matches no kernel of the mixer model')
    tokens_mlp, channels_mlp = models.matched_mixer_widths(wide, spec.sparse_kernels, density)
    fields = {**fields, 'mixer_tokens_mlp': tokens_mlp, 'mixer_channels_mlp': channels_mlp}
  model = models.ModelSpec(**fields, widths=widths, num_classes=info.num_classes)
  layers = model.sparse_layers(spec.sparse_kernels)
  if spec.kind != 'dense' and not layers:
    _fail('connectivity.sparse_kernels', spec.sparse_kernels, f'matches no kernel of the {model.kind} model')
  for path, n_in, n_out in layers if spec.kind == 'g2g' else ():
    for side, n in (('input', n_in), ('output', n_out)):
      _divisible(_size_field(model, path, side), n, spec.num_groups, 'connectivity.num_groups')
  if spec.inter == 'tiles':
    if spec.kind != 'g2g':
      _fail('connectivity.inter', 'tiles', f"needs connectivity.kind = 'g2g', not {spec.kind!r}")
    for path, n_in, n_out in layers:
      why = conn.check_sizes(n_in, n_out, spec.num_groups, spec.tile_size)
      if why:
        _fail('connectivity.tile_size', spec.tile_size, f'does not tile {path.rsplit("/", 1)[0].split("/")[-1]}: {why}')
  return model


def _size_field(model: models.ModelSpec, path: str, side: str) -> str:
  """The config field that sets one side's width of a sparse layer."""
  if model.kind == 'g2gnet':
    first_input = path == 'head/hidden_0/kernel' and side == 'input'
    return 'model.patch_grid**2 * model.patch_channels (the feature count)' if first_input else 'model.hidden_width'
  _, mlp, dense, _ = path.split('/')
  outer = (dense == 'Dense_0') == (side == 'input')  # an MLP block maps the outer width to its hidden one and back
  if mlp == 'token_mlp':
    return 'model.patch_grid**2 (the token count)' if outer else 'model.mixer_tokens_mlp'
  return 'model.mixer_channels' if outer else 'model.mixer_channels_mlp'


def _no_absent_edge(spec: conn.ConnectivitySpec) -> bool:
  """Whether the spec's layers have every edge present (nothing for a rewiring to grow into)."""
  if spec.inter == 'tiles':
    return spec.p_intra == 1 and spec.tile_density == 1
  return spec.density >= 1


def _parse_rewiring(fields: dict, spec: conn.ConnectivitySpec, total_steps: int) -> rewiring.RewireSpec:
  kind = spec.kind
  prune, grow = fields['prune'], fields['grow']
  if (prune == 'none') != (grow == 'none'):
    field, value = ('rewiring.grow', grow) if grow == 'none' else ('rewiring.prune', prune)
    _fail(field, value, "must be set too: rewiring runs when prune and grow are both not 'none'")
  enabled = prune != 'none'
  if enabled and kind == 'dense':
    _fail('rewiring.prune', prune, "must be 'none' with connectivity.kind = 'dense' (nothing to rewire)")
  if enabled and fields['candidates'] == 'same_kind' and kind != 'g2g':
    _fail('rewiring.candidates', 'same_kind', f"needs connectivity.kind = 'g2g' (groups), not {kind!r}")
  if enabled and _no_absent_edge(spec):
    _fail(
      'rewiring.prune',
      prune,
      'needs absent edges to grow, and every edge of these layers is present: set connectivity.tile_density < 1 '
      '(0.5, say) for tiles, or connectivity.p_inter < 1 (or p_intra < 1)',
    )
  end, start = fields['rewire_end_steps'], fields['rewire_start_steps']
  if end and end < start:
    _fail('rewiring.rewire_end_steps', end, f'must be 0 or >= rewiring.rewire_start_steps ({start})')
  return rewiring.RewireSpec(**{**fields, 'rewire_end_steps': end or total_steps})  # 0: the end of training


def changed_fields(old: dict, new: dict, prefix: str = '') -> dict[str, tuple[Any, Any]]:
  """{dotted field: (old, new)} where two config dicts differ, runtime and retired fields excepted."""
  out = {}
  for key in sorted(set(old) | set(new)):
    field = prefix + key
    a, b = old.get(key, ADDED_FIELDS.get(field)), new.get(key, ADDED_FIELDS.get(field))
    if isinstance(a, dict) and isinstance(b, dict):
      out.update(changed_fields(a, b, field + '.'))
    elif a != b and field not in RUNTIME_FIELDS and field not in RETIRED_FIELDS:
      out[field] = (a, b)
  return out


def check_same_run(saved: dict | None, config_dict: dict, workdir: str):
  """A ConfigError unless a workdir's saved config (None: a new workdir) and this one are one run:
  resuming with another config would mix two runs."""
  diff = config_differences(saved, config_dict) if saved is not None else []
  if diff:
    raise ConfigError(
      f'workdir {workdir} holds a run with another config ({"; ".join(diff)}); '
      'use a new --workdir, or the same config to resume'
    )


def config_differences(old: dict, new: dict) -> list[str]:
  """'field: old -> new' for each field where two config dicts differ, runtime fields excepted."""
  return [f'{field}: {a!r} -> {b!r}' for field, (a, b) in changed_fields(old, new).items()]
