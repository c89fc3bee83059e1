"""CIFAR-100, 30 epochs, crop+flip, G2GNet mixer with p' = 0.15 unless a row is named.

  python -m g2g_jax.main --config=configs/cifar100.py --workdir=/tmp/g2g/cifar100

Data: tfds (downloads where the network allows), or cifar-100-python under data.dir.
Not obtainable on the project's own machines; not run there.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from configs import default  # noqa: E402  (configs/default.py, wherever this file is run from)


def get_config(row: str = 'g2g'):
  config = default.get_config(row)
  config.data.name = 'cifar100'  # 4x4 patches of 8x8 pixels
  return config
