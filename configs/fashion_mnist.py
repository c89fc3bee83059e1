"""Fashion-MNIST, 30 epochs, G2GNet mixer with p' = 0.15 (74.4% sparse) unless a row is named.

  python -m g2g_jax.main --config=configs/fashion_mnist.py --workdir=/tmp/g2g/fmnist
  python -m g2g_jax.main --config=configs/fashion_mnist.py:fc_v2 --workdir=/tmp/g2g/fmnist_fc_v2

Measured (3 seeds, final test accuracy, mean ± std; experiments/reproduce/README.md, table 1):
G2G mixer 90.62 ± 0.13%, FC v2 90.04 ± 0.14%. Seed 0 of the first command: 90.50% final,
90.52% best, about 3.5 minutes for the whole command on the project's 2-core CPU; 8.2 s of
training on one H100 (experiments/bench/README.md).

Rows: g2g (default, mixer), g2g_index, g2g_random, er, fc_v1, fc_v2 (configs/default.py).
Data: Debian's dataset-fashion-mnist (IDX files), tfds, or IDX files under data.dir.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from configs import default  # noqa: E402  (configs/default.py, wherever this file is run from)


def get_config(row: str = 'g2g'):
  config = default.get_config(row)
  config.data.name = 'fashion_mnist'
  return config
