"""A tiny run in seconds on synthetic data, for tests and for checking an install.

  python -m g2g_jax.main --config=configs/smoke.py --workdir=/tmp/g2g/smoke

Synthetic 28x28x1 images (class prototypes plus noise), 64 patch features, three sparse
hidden layers of 32 with G = 4, 2 epochs of 8 steps. Any row of the main table works:
configs/smoke.py:fc_v1 and so on. Measured: 54.17% test accuracy (chance is 10%), about
10 s for the whole command on the project's 2-core CPU.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from configs import default  # noqa: E402  (configs/default.py, wherever this file is run from)


def get_config(row: str = 'g2g'):
  config = default.get_config(row)
  config.num_epochs = 2
  config.batch_size = 32
  config.eval_batch_size = 64
  config.log_every_steps = 4
  config.data.name = 'synthetic'
  config.data.synthetic_num_train = 256
  config.data.synthetic_num_test = 96  # not a multiple of eval_batch_size: exercises padding
  config.model.patch_channels = 4
  config.model.hidden_width = 32
  config.connectivity.num_groups = 4
  config.connectivity.p_inter = 0.25
  config.optim.learning_rate = 1e-2  # a tiny net, 16 steps: learns the synthetic classes (about 50%)
  return config
