"""Linen modules of G2GNet: the patch-conv front end and the MLP head. Mask-agnostic.

The modules never see connectivity masks: the train step keeps pruned weights at exactly
zero in the params, so a masked layer is an ordinary `nn.Dense`.
"""

import dataclasses
from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from g2g_jax import connectivity as conn
from g2g_jax import tiles
from g2g_jax.tiles import TiledDense, TilePlan

ORDERS = ('patch_major', 'channel_major')
WIDTH_RULES = ('fixed', 'match_g2g_params')
# name -> (scale, distribution) of a fan-in variance-scaling initialiser.
KERNEL_INITS = {
  'torch': (1 / 3, 'uniform'),  # PyTorch's Linear / Conv default (the lab's code): U(+-1/sqrt(fan_in))
  'lecun_normal': (1.0, 'truncated_normal'),
  'he_normal': (2.0, 'truncated_normal'),
}


@dataclasses.dataclass(frozen=True)
class ModelSpec:
  """The network's shape (config.model), with the hidden widths and classes it resolves to."""

  patch_grid: int = 4  # patches per image side
  patch_channels: int = 32  # conv channels per patch
  feature_order: str = 'patch_major'  # 'patch_major' | 'channel_major'
  hidden_width: int = 1024  # the config's width (widths holds what the width rule made of it)
  num_hidden: int = 3
  width_rule: str = 'fixed'  # 'fixed' | 'match_g2g_params' (FC v1)
  kernel_init: str = 'torch'  # a name in KERNEL_INITS
  widths: tuple[int, ...] = (1024, 1024, 1024)  # resolved hidden widths
  num_classes: int = 10

  @property
  def num_patches(self) -> int:
    return self.patch_grid**2

  @property
  def num_features(self) -> int:
    return self.num_patches * self.patch_channels


def make_model(spec: ModelSpec, connectivity: conn.ConnectivitySpec) -> 'G2GNet':
  """G2GNet for the spec; its hidden layers are TiledDense when connectivity.inter is 'tiles'."""
  plans = ()
  if connectivity.inter == 'tiles':
    sizes = [spec.num_features, *spec.widths]
    plans = tuple(
      tiles.plan_layer(n_in, n_out, k, connectivity)
      for k, (n_in, n_out) in enumerate(zip(sizes[:-1], sizes[1:], strict=True))
    )
  return G2GNet(
    widths=spec.widths,
    num_classes=spec.num_classes,
    patch_grid=spec.patch_grid,
    patch_channels=spec.patch_channels,
    feature_order=spec.feature_order,
    kernel_init=spec.kernel_init,
    tile_plans=plans,
  )


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
  patch_grid: int = 4
  patch_channels: int = 32
  feature_order: str = 'patch_major'
  kernel_init: str = 'torch'
  tile_plans: Sequence[TilePlan | None] = ()

  @nn.compact
  def __call__(self, images: jax.Array) -> tuple[jax.Array, tuple[jax.Array, ...]]:
    encoder = PatchEncoder(self.patch_grid, self.patch_channels, self.feature_order, self.kernel_init, name='encoder')
    features = encoder(images)
    return MLPHead(self.widths, self.num_classes, self.kernel_init, self.tile_plans, name='head')(features)
