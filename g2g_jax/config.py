"""Turns a ConfigDict into one complete, validated RunSpec: the only place that reads configs.

Every config field is declared once, on its spec (g2g_jax.fields): RunSpec's top-level
fields here, data.DataSpec, models.ModelChoice / ModelSpec and each family's spec,
connectivity.ConnectivitySpec, optim.OptimSpec, rewiring.RewireSpec. A config section becomes
its spec under the same field names. Every 'auto' is resolved here, every derived number
(FC v1's widths, the run's steps, the rewiring window) is computed here, and every check runs
here, before anything is loaded, compiled or written. A failure names the field, the value
and what is allowed. `python -m g2g_jax.config` lists every field, its default and meaning.
"""

import dataclasses
import sys
from typing import Any

import jax
import ml_collections

from g2g_jax import connectivity as conn
from g2g_jax import data as data_lib
from g2g_jax import fields, models, optim, rewiring, schedule
from g2g_jax.fields import Choice, FieldError, Int, field

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

  data: data_lib.DataSpec
  model: models.ModelSpec
  connectivity: conn.ConnectivitySpec
  optim: optim.OptimSpec
  rewiring: rewiring.RewireSpec
  seed: int = field(0, Int(0), 'the one seed of params, masks, shuffling and augmentation')
  num_seeds: int = field(
    1, Int(1), 'replicas trained in one program, vmapped: seeds seed .. seed + num_seeds - 1 (pays on a GPU)'
  )
  num_epochs: int = field(30, Int(1), 'epochs: passes over the training set')
  batch_size: int = field(256, Int(1), 'examples per optimizer step, over all devices')
  num_microbatches: int = field(
    1, Int(1), 'slices of a batch whose gradients are summed one at a time: faster on a CPU for large activations'
  )
  eval_batch_size: int = field(1000, Int(1), 'examples per evaluation step, over all devices')
  eval_every_epochs: int = field(1, Int(1), 'epochs between test-set evaluations (the last epoch always)')
  checkpoint_every_epochs: int = field(1, Int(1), 'epochs between checkpoints (the end always saves)')
  log_every_steps: int = field(50, Int(1), 'steps between progress updates and non-finite-loss checks')
  halt_after_steps: int = field(0, Int(0), 'save and stop once the run reaches this step; 0 = never')
  num_devices: int = field(0, Int(0), 'devices in the data-parallel mesh; 0 = all local devices')
  progress: str = field('auto', Choice(PROGRESS), "'auto' (a bar on a terminal, else lines) | 'bar' | 'lines' | 'none'")
  loop: str = field(
    'auto',
    Choice(LOOPS),
    "'steps' (a jitted call per step) | 'scan' (the data on the device, chunks of steps per call) | 'auto' "
    '(steps on a CPU, scan elsewhere)',
  )

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

  def resolved(self) -> str:
    """What the config's 'auto' fields and derived numbers came to, for the log."""
    window = self.rewiring
    return (
      f'loop={self.loop}, progress={self.progress}, num_devices={self.num_devices}, '
      f'augment={self.data.augment}, {self.model.summary()}, '
      f'{self.steps_per_epoch} steps per epoch, {self.total_steps} in all'
      + (f', rewiring in steps [{window.rewire_start_steps}, {window.rewire_end_steps}]' if window.enabled else '')
    )


# The config's sections: their name and the spec classes whose fields they hold.
SECTIONS = {
  '': (RunSpec,),
  'data': (data_lib.DataSpec,),
  'model': (models.ModelChoice, models.ModelSpec, *models.FAMILIES.values()),
  'connectivity': (conn.ConnectivitySpec,),
  'optim': (optim.OptimSpec,),
  'rewiring': (rewiring.RewireSpec,),
}


def default_config() -> ml_collections.ConfigDict:
  """Every config field at its default: what configs/default.py starts from."""
  config = ml_collections.ConfigDict(fields.section(*SECTIONS['']))
  for name, classes in SECTIONS.items():
    if name:
      config[name] = ml_collections.ConfigDict(fields.section(*classes))
  return config


def _fail(name: str, value: Any, allowed: str):
  raise ConfigError(f'config.{name} = {value!r}: {allowed}')


def _section(config: ml_collections.ConfigDict, name: str) -> dict:
  """The section's fields, each checked by its rule: {field: value}."""
  c = config[name] if name else config
  prefix = f'{name}.' if name else ''
  declared = fields.section(*SECTIONS[name])
  missing = sorted(set(declared) - set(c.keys()))
  if missing:
    raise ConfigError(f'config.{prefix}{missing[0]} is missing (python -m g2g_jax.config lists every field)')
  sections = set(SECTIONS) if not name else set()
  unknown = sorted(set(c.keys()) - set(declared) - sections - set(RETIRED_FIELDS))
  if unknown:
    raise ConfigError(f'config.{prefix}{unknown[0]}: unknown field (python -m g2g_jax.config lists every field)')
  try:
    return fields.check_section(c, *SECTIONS[name], prefix=f'config.{prefix}')
  except FieldError as e:
    raise ConfigError(str(e)) from None


def _divisible(name: str, value: int, by: int, what: str):
  if value % by:
    _fail(name, value, f'must be divisible by {what} ({by})')


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
  family = models.FAMILIES[_section(config, 'model')['kind']]
  connectivity = _section(config, 'connectivity')
  connectivity['sparse_kernels'] = connectivity['sparse_kernels'] or family.SPARSE_KERNELS  # '': the model's own
  connectivity = conn.ConnectivitySpec(**connectivity)
  model = _parse_model(family, _section(config, 'model'), data.info, connectivity)
  optim_spec = optim.OptimSpec(**_section(config, 'optim'))
  total_steps = data.info.num_train // top['batch_size'] * top['num_epochs']
  rewire = _parse_rewiring(_section(config, 'rewiring'), connectivity, total_steps)
  return RunSpec(data=data, model=model, connectivity=connectivity, optim=optim_spec, rewiring=rewire, **top)


def _parse_data(values: dict, batch_size: int) -> data_lib.DataSpec:
  if values['name'] == 'synthetic' and values['source'] not in ('auto', 'synthetic'):
    _fail('data.source', values['source'], "must be 'auto' or 'synthetic' for data.name = 'synthetic'")
  spec = data_lib.DataSpec(**values)
  if spec.augment == 'auto':
    spec = dataclasses.replace(spec, augment=spec.info.augment)
  if batch_size > spec.info.num_train:
    _fail('batch_size', batch_size, f'must be <= the training set size ({spec.info.num_train})')
  return spec


def _parse_model(family, values: dict, info: data_lib.DatasetInfo, spec: conn.ConnectivitySpec) -> models.ModelSpec:
  grid = values['patch_grid']
  height, width = info.image_shape[:2]
  if height % grid or width % grid:
    _fail('model.patch_grid', grid, f'must divide the image size {height}x{width}')
  mine = {f.name for f in fields.config_fields(family)}  # a family reads its own fields and no other's
  model = family(**{k: v for k, v in values.items() if k in mine}, num_classes=info.num_classes).resolved(spec)
  layers = model.sparse_layers(spec.sparse_kernels)
  if not layers and (spec.kind != 'dense' or model.width_rule == 'match_g2g_params'):
    _fail('connectivity.sparse_kernels', spec.sparse_kernels, f'matches no kernel of the {model.kind} model')
  for path, n_in, n_out in layers if spec.kind == 'g2g' else ():
    for side, n in (('input', n_in), ('output', n_out)):
      _divisible(model.size_field(path, side), n, spec.num_groups, 'connectivity.num_groups')
  if spec.inter == 'tiles':
    if spec.kind != 'g2g':
      _fail('connectivity.inter', 'tiles', f"needs connectivity.kind = 'g2g', not {spec.kind!r}")
    for path, n_in, n_out in layers:
      why = conn.check_sizes(n_in, n_out, spec.num_groups, spec.tile_size)
      if why:
        _fail('connectivity.tile_size', spec.tile_size, f'does not tile {path.rsplit("/", 1)[0].split("/")[-1]}: {why}')
  return model


def _no_absent_edge(spec: conn.ConnectivitySpec) -> bool:
  """Whether the spec's layers have every edge present (nothing for a rewiring to grow into)."""
  if spec.inter == 'tiles':
    return spec.p_intra == 1 and spec.tile_density == 1
  return spec.density >= 1


def _parse_rewiring(values: dict, spec: conn.ConnectivitySpec, total_steps: int) -> rewiring.RewireSpec:
  kind = spec.kind
  prune, grow = values['prune'], values['grow']
  if (prune == 'none') != (grow == 'none'):
    name, value = ('rewiring.grow', grow) if grow == 'none' else ('rewiring.prune', prune)
    _fail(name, value, "must be set too: rewiring runs when prune and grow are both not 'none'")
  enabled = prune != 'none'
  if enabled and kind == 'dense':
    _fail('rewiring.prune', prune, "must be 'none' with connectivity.kind = 'dense' (nothing to rewire)")
  if enabled and values['candidates'] == 'same_kind' and kind != 'g2g':
    _fail('rewiring.candidates', 'same_kind', f"needs connectivity.kind = 'g2g' (groups), not {kind!r}")
  if enabled and _no_absent_edge(spec):
    _fail(
      'rewiring.prune',
      prune,
      'needs absent edges to grow, and every edge of these layers is present: set connectivity.tile_density < 1 '
      '(0.5, say) for tiles, or connectivity.p_inter < 1 (or p_intra < 1)',
    )
  end, start = values['rewire_end_steps'], values['rewire_start_steps']
  if end and end < start:
    _fail('rewiring.rewire_end_steps', end, f'must be 0 or >= rewiring.rewire_start_steps ({start})')
  return rewiring.RewireSpec(**{**values, 'rewire_end_steps': end or total_steps})  # 0: the end of training


def _family_fields(config_dict: dict) -> set[str] | None:
  """The model fields a saved config's family reads ('model.X'), or None for a config without a model."""
  model = config_dict.get('model')
  if not isinstance(model, dict):
    return None
  family = models.FAMILIES.get(model.get('kind', ADDED_FIELDS['model.kind']))
  if family is None:
    return None
  return {f'model.{f.name}' for cls in (models.ModelChoice, family) for f in fields.config_fields(cls)}


def changed_fields(old: dict, new: dict, prefix: str = '') -> dict[str, tuple[Any, Any]]:
  """{dotted field: (old, new)} where two config dicts differ: runtime and retired fields
  excepted, and model fields that neither config's family reads."""
  read = (_family_fields(old) or set()) | (_family_fields(new) or set()) if not prefix else None
  return _changed(old, new, prefix, read)


def _changed(old: dict, new: dict, prefix: str, read: set[str] | None) -> dict[str, tuple[Any, Any]]:
  out = {}
  for key in sorted(set(old) | set(new)):
    name = prefix + key
    a, b = old.get(key, ADDED_FIELDS.get(name)), new.get(key, ADDED_FIELDS.get(name))
    if isinstance(a, dict) and isinstance(b, dict):
      out.update(_changed(a, b, name + '.', read))
    elif a != b and name not in RUNTIME_FIELDS and name not in RETIRED_FIELDS:
      if read is not None and name.startswith('model.') and name not in read:
        continue  # a field of another model family
      out[name] = (a, b)
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
  return [f'{name}: {a!r} -> {b!r}' for name, (a, b) in changed_fields(old, new).items()]


def main():
  """Prints every config field: its section, default and meaning."""
  for name, classes in SECTIONS.items():
    print(f'# config.{name}' if name else '# config')
    seen = set()
    for cls in classes:
      for line in fields.describe(cls, prefix=f'{name}.' if name else ''):
        key = line.split(' = ')[0]
        if key not in seen:
          seen.add(key)
          print(line)
    print()


if __name__ == '__main__':
  main()
