"""CIFAR-10, 30 epochs, crop+flip, G2GNet mixer with p' = 0.15 unless a row is named.

  python -m g2g_jax.main --config=configs/cifar10.py --workdir=/tmp/g2g/cifar10
  python -m g2g_jax.main --config=configs/cifar10.py:fc_v2 --workdir=/tmp/g2g/cifar10_fc_v2

Measured on the JPEG copy (3 seeds, final test accuracy, mean ± std;
experiments/reproduce/README.md, table 1): G2G mixer 61.61 ± 0.56%, FC v2 63.87 ± 0.21%,
about 3.5 minutes a run on the project's 2-core CPU.

Data: tfds, or cifar-10-batches-bin / cifar-10-batches-py under data.dir
(default ~/.cache/g2g_jax); docs/data.md. The project's own results were trained on a JPEG
copy of the images (labels and splits exact); their results lines say so.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from configs import default  # noqa: E402  (configs/default.py, wherever this file is run from)


def get_config(row: str = 'g2g'):
  config = default.get_config(row)
  config.data.name = 'cifar10'  # 4x4 patches of 8x8 pixels
  return config
