import pytest

from conftest import load_config
from g2g_jax.experiment import ConfigError, config_differences, parse_config

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
  ('cpu_dots', 'mkl', "config.cpu_dots = 'mkl': must be one of 'auto', 'xla', 'eigen'"),
]


@pytest.mark.parametrize('field,value,message', BAD)
def test_bad_values_name_field_value_and_allowed(smoke_config, field, value, message):
  section, _, name = field.rpartition('.')
  (smoke_config[section] if section else smoke_config)[name] = value
  with pytest.raises(ConfigError) as e:
    parse_config(smoke_config, num_available_devices=4)
  assert message in str(e.value)


def test_defaults_parse_for_every_dataset_and_row():
  for name in ('fashion_mnist', 'cifar10', 'cifar100', 'smoke'):
    for row in ('g2g', 'g2g_index', 'g2g_random', 'er', 'fc_v1', 'fc_v2'):
      exp = parse_config(load_config(name, row), num_available_devices=4)
      assert exp.model.num_classes in (10, 100)


def test_fc_v1_width_is_computed_and_fc_v2_keeps_1024():
  assert parse_config(load_config('fashion_mnist', 'fc_v1'), 1).model.widths == (469, 469, 469)
  assert parse_config(load_config('fashion_mnist', 'fc_v2'), 1).model.widths == (1024, 1024, 1024)
  exp = parse_config(load_config('cifar100', 'fc_v1'), 1)
  assert exp.model.widths[0] != 469  # 100 classes change the parameter budget
  assert exp.data.augment == 'crop_flip'


def test_config_differences_ignores_runtime_fields():
  old = {'seed': 0, 'progress': 'bar', 'data': {'name': 'x', 'dir': 'a'}}
  new = {'seed': 1, 'progress': 'none', 'data': {'name': 'x', 'dir': 'b'}}
  assert config_differences(old, new) == ['seed: 0 -> 1']
