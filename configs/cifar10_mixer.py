"""An MLP-Mixer on CIFAR-10 whose token- and channel-mixing MLPs are G2G layers (mixer
grouping, G = 8, p' = 0.15: 25.6% dense), unless a row is named; 10 epochs, crop+flip.

  python -m g2g_jax.main --config=configs/cifar10_mixer.py --workdir=/tmp/g2g/mixer
  python -m g2g_jax.main --config=configs/cifar10_mixer.py:fc_v2 --workdir=/tmp/g2g/mixer_dense   # dense MLPs
  python -m g2g_jax.main --config=configs/cifar10_mixer.py --config.connectivity.inter=tiles --workdir=DIR

The Mixer: 8 x 8 patches of 4 x 4 pixels (64 tokens), 128 channels, 2 blocks, token MLP
64 wide, channel MLP 256 wide; its sparse kernels are the MLPs' Dense layers
(connectivity.sparse_kernels = 'block_*/*_mlp/Dense_*/kernel'). Rows g2g, g2g_index,
g2g_random, er and fc_v2 (dense) apply; fc_v1 is G2GNet's alone. Measured on the 2-core CPU
(seed 0, 10 epochs, beside one other run; experiments/reproduce/README.md, the mixer study):
dense MLPs (fc_v2) 63.66% in 29 min of training, G2G (this row) 54.95% in 33 min, G2G with
tiles 54.99% in 30 min. Small MLPs gain nothing from tiles on a CPU.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from configs import cifar10  # noqa: E402  (configs/cifar10.py, wherever this file is run from)


def get_config(row: str = 'g2g'):
  config = cifar10.get_config(row)
  config.num_epochs = 10
  config.model.kind = 'mixer'
  config.model.patch_grid = 8  # 64 tokens of 4 x 4 pixels
  return config
