"""An MLP-Mixer on CIFAR-10 whose token- and channel-mixing MLPs are G2G layers (mixer
grouping, G = 8, p' = 0.15: 25.6% dense), unless a row is named; 10 epochs, crop+flip.

  python -m g2g_jax.main --config=configs/cifar10_mixer.py --workdir=/tmp/g2g/mixer
  python -m g2g_jax.main --config=configs/cifar10_mixer.py:fc_v2 --workdir=/tmp/g2g/mixer_dense   # dense MLPs
  python -m g2g_jax.main --config=configs/cifar10_mixer.py:fc_v1 --workdir=/tmp/g2g/mixer_narrow  # dense, G2G's params

The Mixer: 8 x 8 patches of 4 x 4 pixels (64 tokens), 128 channels, 2 blocks, token MLP
64 wide, channel MLP 256 wide; its sparse kernels are the MLPs' Dense layers
(connectivity.sparse_kernels = 'block_*/*_mlp/Dense_*/kernel'). Rows g2g, g2g_index,
g2g_random, er, fc_v2 (dense) and fc_v1 (dense, the MLPs that connectivity.sparse_kernels
names narrowed to G2G's head params) apply. Each step sums the gradients of 16 slices of the
batch (num_microbatches), which is faster on a CPU; on a GPU set --config.num_microbatches=1.
Results: experiments/reproduce/README.md, the mixer study.
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
  config.num_microbatches = 16  # 16 examples' activations at a time fit a CPU's caches: 1.7x faster steps there
  return config
