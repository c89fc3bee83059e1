import pytest

from conftest import load_config
from g2g_jax import models
from g2g_jax.config import ConfigError, config_differences, parse_config

BAD = [
  ('connectivity.p_inter', 1.5, 'config.connectivity.p_inter = 1.5: must be in [0.0, 1.0]'),
  ('connectivity.p_intra', -0.1, 'config.connectivity.p_intra = -0.1: must be >= 0.0'),
  ('model.hidden_width', 30, 'config.model.hidden_width = 30: must be divisible by connectivity.num_groups (4)'),
  ('connectivity.num_groups', 3, 'feature count) = 64: must be divisible by connectivity.num_groups (3)'),
  ('data.name', 'mnist', "config.data.name = 'mnist': must be one of 'fashion_mnist', 'cifar10'"),
  (
    'connectivity.grouping',
    'spiral',
    "config.connectivity.grouping = 'spiral': must be one of 'index', 'random', 'mixer'",
  ),
  ('connectivity.kind', 'sparse', "config.connectivity.kind = 'sparse': must be one of 'dense', 'er', 'g2g'"),
  ('batch_size', 30, 'config.batch_size = 30: must be divisible by the number of devices (4)'),
  ('eval_batch_size', 6, 'config.eval_batch_size = 6: must be divisible by the number of devices (4)'),
  ('batch_size', 1024, 'config.batch_size = 1024: must be <= the training set size (256)'),
  ('model.patch_grid', 5, 'config.model.patch_grid = 5: must divide the image size 28x28'),
  ('optim.learning_rate', 0.0, 'config.optim.learning_rate = 0.0: must be > 0.0'),
  ('optim.learning_rate', float('nan'), 'config.optim.learning_rate = nan: must be a finite number'),
  ('num_epochs', 0, 'config.num_epochs = 0: must be an integer >= 1'),
  ('num_devices', 9, 'config.num_devices = 9: must be an integer in [0, 4]'),
  ('data.augment', 'mixup', "config.data.augment = 'mixup': must be one of 'auto', 'none', 'crop_flip'"),
  ('loop', 'fast', "config.loop = 'fast': must be one of 'auto', 'steps', 'scan'"),
]


@pytest.mark.parametrize('field,value,message', BAD)
def test_bad_values_name_field_value_and_allowed(smoke_config, field, value, message):
  section, _, name = field.rpartition('.')
  (smoke_config[section] if section else smoke_config)[name] = value
  with pytest.raises(ConfigError) as e:
    parse_config(smoke_config, device_count=4)
  assert message in str(e.value)


def test_defaults_parse_for_every_dataset_and_row():
  for name in ('fashion_mnist', 'cifar10', 'cifar100', 'smoke'):
    for row in ('g2g', 'g2g_index', 'g2g_random', 'er', 'fc_v1', 'fc_v2'):
      spec = parse_config(load_config(name, row), device_count=4)
      assert spec.model.num_classes in (10, 100)


def test_fc_v1_width_is_computed_and_fc_v2_keeps_1024():
  assert parse_config(load_config('fashion_mnist', 'fc_v1'), device_count=1).model.widths == (469, 469, 469)
  assert parse_config(load_config('fashion_mnist', 'fc_v2'), device_count=1).model.widths == (1024, 1024, 1024)
  spec = parse_config(load_config('cifar100', 'fc_v1'), device_count=1)
  assert spec.model.widths[0] != 469  # 100 classes change the parameter budget
  assert spec.data.augment == 'crop_flip'


def test_config_differences_ignores_runtime_fields():
  old = {'seed': 0, 'progress': 'bar', 'data': {'name': 'x', 'dir': 'a'}}
  new = {'seed': 1, 'progress': 'none', 'data': {'name': 'x', 'dir': 'b'}}
  assert config_differences(old, new) == ['seed: 0 -> 1']


def test_every_auto_and_derived_number_is_resolved_by_the_parser():
  config = load_config('fashion_mnist', 'g2g')
  config.rewiring.prune, config.rewiring.grow = 'magnitude', 'random'
  spec = parse_config(config, device_count=2, backend='cpu')
  assert (spec.loop, spec.num_devices, spec.data.augment) == ('steps', 2, 'none')
  assert spec.progress in ('bar', 'lines')
  assert spec.steps_per_epoch == 234 and spec.total_steps == 234 * 30
  assert spec.rewiring.rewire_end_steps == spec.total_steps  # 0: the end of training
  assert parse_config(config, device_count=1, backend='gpu').loop == 'scan'
  assert spec.connectivity.sparse_kernels == 'head/hidden_*/kernel'  # '': the model's own
  config.rewiring.rewire_end_steps = 5000
  assert parse_config(config, device_count=1).rewiring.rewire_end_steps == 5000


def test_config_keys_are_the_spec_fields():
  """Each config section is its spec under the same names (the rules cover every field); the
  model section holds every family's fields, and a run's spec those of its family."""
  for name in ('smoke', 'cifar10_mixer'):
    config = load_config(name)
    config.data.source = 'synthetic'
    spec = parse_config(config, device_count=1)
    for section in ('data', 'connectivity', 'optim', 'rewiring', 'model'):
      for field, value in config[section].items():
        resolved = {('rewiring', 'rewire_end_steps'), ('data', 'augment'), ('connectivity', 'sparse_kernels')}
        theirs = section == 'model' and field != 'kind' and not hasattr(type(spec.model), field)
        if (section, field) not in resolved and not theirs:
          assert getattr(getattr(spec, section), field) == value, (name, section, field)


def test_each_default_is_stated_once_on_its_spec_and_the_config_file_agrees_value_for_value():
  import dataclasses  # noqa: PLC0415

  from g2g_jax import config as config_lib  # noqa: PLC0415
  from g2g_jax import fields  # noqa: PLC0415

  config = load_config('default', 'g2g')
  declared = 0
  for section, classes in config_lib.SECTIONS.items():
    values = config[section] if section else config
    for cls in classes:
      for f in fields.config_fields(cls):
        declared += 1
        assert values[f.name] == f.default, (section, f.name)
        assert f.metadata['meaning'].strip(), (section, f.name)
    keys = set(values.keys()) - (set(config_lib.SECTIONS) if not section else set())
    assert keys == set(fields.section(*classes)), section  # nothing in the file that no spec declares
  assert declared >= 60
  # The library's specs refuse what the command line refuses, naming the spec's field.
  for cls, kwargs, message in [
    (conn_spec(), {'p_inter': 1.5}, r'ConnectivitySpec.p_inter = 1.5: must be in \[0.0, 1.0\]'),
    (models.MixerSpec, {'mixer_blocks': 0}, 'MixerSpec.mixer_blocks = 0: must be an integer >= 1'),
  ]:
    with pytest.raises(ValueError, match=message):
      cls(**kwargs)
  assert dataclasses.replace(models.G2GNetSpec(), hidden_width=8).hidden_width == 8


def conn_spec():
  from g2g_jax.connectivity import ConnectivitySpec  # noqa: PLC0415

  return ConnectivitySpec


def test_a_workdir_refuses_changes_only_to_fields_its_model_family_reads():
  mixer, other = load_config('cifar10_mixer').to_dict(), load_config('cifar10_mixer').to_dict()
  other['model']['hidden_width'] = 512  # G2GNet's: the Mixer never reads it
  assert config_differences(mixer, other) == []
  other['model']['mixer_channels'] = 64
  assert config_differences(mixer, other) == ['model.mixer_channels: 128 -> 64']
  g2gnet = load_config('cifar10').to_dict()
  assert 'model.kind' in ' '.join(config_differences(g2gnet, mixer))


def test_unknown_and_retired_fields():
  config = load_config('smoke')
  config.model.depth = 3
  with pytest.raises(ConfigError, match='config.model.depth: unknown field'):
    parse_config(config, device_count=1)
  config = load_config('smoke')
  config.cpu_dots = 'auto'  # a deleted switch, still in old workdirs' config.json: ignored
  parse_config(config, device_count=1)
  assert config_differences({'cpu_dots': 'auto', 'seed': 0}, {'seed': 0}) == []
