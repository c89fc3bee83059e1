"""Linen modules of G2GNet: the patch-conv front end and the MLP head. Mask-agnostic.

The modules never see connectivity masks: the train step keeps pruned weights at exactly
zero in the params, so a masked layer is an ordinary `nn.Dense`.
"""

from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from g2g_jax.tiles import TiledDense, TilePlan

ORDERS = ('patch_major', 'channel_major')
# name -> (scale, distribution) of a fan-in variance-scaling initialiser.
KERNEL_INITS = {
  'torch': (1 / 3, 'uniform'),  # PyTorch's Linear / Conv default (the lab's code): U(+-1/sqrt(fan_in))
  'lecun_normal': (1.0, 'truncated_normal'),
  'he_normal': (2.0, 'truncated_normal'),
}


def kernel_init(name: str, in_axis=-2, out_axis=-1) -> nn.initializers.Initializer:
  scale, distribution = KERNEL_INITS[name]
  return nn.initializers.variance_scaling(scale, 'fan_in', distribution, in_axis=in_axis, out_axis=out_axis)


class PatchEncoder(nn.Module):
  """Cuts the image into a grid x grid of patches, one shared conv (+ReLU) per patch.

  The conv has kernel = stride = patch size, so each patch becomes one vector of
  `channels` features. `order` decides how they are concatenated: 'patch_major'
  puts feature index patch * channels + c (contiguous groups are then spatial),
  'channel_major' puts c * num_patches + patch.
  """

  grid: int = 4
  channels: int = 32
  order: str = 'patch_major'
  kernel_init: str = 'torch'

  @nn.compact
  def __call__(self, images_BxHxWxC: jax.Array) -> jax.Array:
    b, h, w, _ = images_BxHxWxC.shape
    ph, pw = h // self.grid, w // self.grid
    y = nn.Conv(
      self.channels,
      kernel_size=(ph, pw),
      strides=(ph, pw),
      padding='VALID',
      kernel_init=kernel_init(self.kernel_init),
      name='conv',
    )(images_BxHxWxC)
    y = nn.relu(y)  # [B, grid, grid, channels]
    if self.order == 'channel_major':
      y = jnp.transpose(y, (0, 3, 1, 2))
    return y.reshape(b, -1)


class MLPHead(nn.Module):
  """Hidden Dense+ReLU layers `hidden_0..` (the sparse stack) and a dense `output`.

  A hidden layer with a TilePlan in `tile_plans` is a tiles.TiledDense that computes only
  its present tiles; the others are plain Dense layers (masked, if at all, by the train
  step). Between consecutive tiled layers activations stay feature-major ([neurons,
  batch]), the layout tiled layers compute in: one transpose into a run of them, one out.
  Returns (logits, activations): activations[0] is the input and
  activations[k + 1] the post-ReLU output of hidden_k, i.e. layer k's pre- and
  post-synaptic activity for the Hebbian rule. Unused activations cost nothing under jit.
  """

  widths: Sequence[int]
  num_classes: int
  kernel_init: str = 'torch'
  tile_plans: Sequence[TilePlan | None] = ()

  @nn.compact
  def __call__(self, x: jax.Array) -> tuple[jax.Array, tuple[jax.Array, ...]]:
    acts = [x]
    feature_major = False  # whether x is [neurons, batch]: between tiled layers, see TiledDense
    for k, width in enumerate(self.widths):
      plan = self.tile_plans[k] if k < len(self.tile_plans) else None
      if plan is None:
        x = x.T if feature_major else x
        feature_major = False
        layer = nn.Dense(width, kernel_init=kernel_init(self.kernel_init), name=f'hidden_{k}')
      else:
        x = x if feature_major else x.T
        feature_major = True
        init = kernel_init(self.kernel_init, in_axis=1, out_axis=(0, 2))  # drawn as [C, K x I, O]
        layer = TiledDense(width, plan, feature_major=True, kernel_init=init, name=f'hidden_{k}')
      x = nn.relu(layer(x))
      acts.append(x.T if feature_major else x)  # [batch, neurons]; unused ones cost nothing under jit
    x = x.T if feature_major else x
    logits = nn.Dense(self.num_classes, kernel_init=kernel_init(self.kernel_init), name='output')(x)
    return logits, tuple(acts)


class G2GNet(nn.Module):
  """Patch encoder + MLP head. Takes float images in [0, 1], shape [B, H, W, C]."""

  widths: Sequence[int]
  num_classes: int
  grid: int = 4
  channels: int = 32
  order: str = 'patch_major'
  kernel_init: str = 'torch'
  tile_plans: Sequence[TilePlan | None] = ()

  @nn.compact
  def __call__(self, images: jax.Array) -> tuple[jax.Array, tuple[jax.Array, ...]]:
    features = PatchEncoder(self.grid, self.channels, self.order, self.kernel_init, name='encoder')(images)
    return MLPHead(self.widths, self.num_classes, self.kernel_init, self.tile_plans, name='head')(features)
