"""The model families, a spec each (its config fields, parameter paths, sparse kernels, head and
size rules), and their Linen modules: G2GNet (patch-conv front end + MLP head), an MLP-Mixer.

The modules never see connectivity masks: the train step keeps pruned weights at exactly
zero in the params, so a masked layer is an ordinary `nn.Dense`. A sparse layer may instead
be a tiles.TiledDense, which reads its tile layout (connectivity draws it) and computes only
its present tiles. Models return logits; the Hebbian rule reads layer activity by
interception (rewiring.layer_activity).
"""

import dataclasses
import fnmatch
from collections.abc import Sequence
from typing import ClassVar

import flax.linen as nn
import jax
import jax.numpy as jnp

from g2g_jax import connectivity as conn
from g2g_jax.connectivity import TilePlan
from g2g_jax.fields import Choice, Int, check, field
from g2g_jax.tiles import TiledDense

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
  """What every model family's spec has (config.model): the patches, the width rule, the init."""

  KIND: ClassVar[str] = ''
  SPARSE_KERNELS: ClassVar[str] = ''  # the kernels a connectivity makes sparse unless told otherwise
  HEAD: ClassVar[str] = ''  # the params the "head" counts (accounting's head_params)

  patch_grid: int = field(4, Int(1), 'patches per image side (4: 7x7 pixels of 28x28 images, 8x8 of 32x32)')
  width_rule: str = field(
    'fixed',
    Choice(WIDTH_RULES),
    "'fixed' | 'match_g2g_params' (FC v1: dense, as many head params as G2G's expected count: G2GNet's "
    "hidden width, the Mixer's MLPs that connectivity.sparse_kernels names, narrowed alike)",
  )
  kernel_init: str = field(
    'torch', Choice(tuple(KERNEL_INITS)), "'torch' (U(+-1/sqrt(fan_in)), the lab's) | 'lecun_normal' | 'he_normal'"
  )
  num_classes: int = 10  # resolved: the data's classes

  def __post_init__(self):
    check(self)

  @property
  def kind(self) -> str:
    return self.KIND

  @property
  def num_patches(self) -> int:
    return self.patch_grid**2

  @property
  def head(self) -> str:
    return self.HEAD


@dataclasses.dataclass(frozen=True)
class G2GNetSpec(ModelSpec):
  """G2GNet (the paper's): a patch-conv front end and an MLP head of sparse hidden layers."""

  KIND: ClassVar[str] = 'g2gnet'
  SPARSE_KERNELS: ClassVar[str] = 'head/hidden_*/kernel'
  HEAD: ClassVar[str] = 'head/*'

  patch_channels: int = field(32, Int(1), 'conv channels per patch; features = patch_grid**2 * this')
  feature_order: str = field('patch_major', Choice(ORDERS), "'patch_major' (index = patch*C + c) | 'channel_major'")
  hidden_width: int = field(1024, Int(1), 'neurons per hidden layer')
  num_hidden: int = field(3, Int(1), 'hidden (sparse) layers; the output layer is always dense')
  widths: tuple[int, ...] = ()  # resolved: the hidden widths the width rule made of hidden_width

  @property
  def num_features(self) -> int:
    return self.num_patches * self.patch_channels

  @property
  def runs(self) -> dict[str, int]:
    """Module-path patterns of kernels that run more than once per example, and how often."""
    return {'encoder/*': self.num_patches}

  def sparse_layers(self, pattern: str = '*') -> list[tuple[str, int, int]]:
    """(kernel path, n_in, n_out) of each layer a connectivity may make sparse whose path matches
    the fnmatch pattern, in natural order."""
    sizes = [self.num_features, *self.widths]
    layers = [(f'head/hidden_{k}/kernel', a, b) for k, (a, b) in enumerate(zip(sizes[:-1], sizes[1:], strict=True))]
    return [layer for layer in layers if fnmatch.fnmatchcase(layer[0], pattern)]

  def size_field(self, path: str, side: str) -> str:
    """The config field that sets one side's width of a sparse layer."""
    if path == 'head/hidden_0/kernel' and side == 'input':
      return 'model.patch_grid**2 * model.patch_channels (the feature count)'
    return 'model.hidden_width'

  def summary(self) -> str:
    return f'hidden widths={list(self.widths)}'

  def resolved(self, connectivity: conn.ConnectivitySpec) -> 'G2GNetSpec':
    """The spec with its widths: hidden_width, or (FC v1) the width whose dense head has G2G's
    expected head params."""
    widths = (self.hidden_width,) * self.num_hidden
    if self.width_rule == 'match_g2g_params':
      density = conn.expected_density(connectivity.num_groups, connectivity.p_intra, connectivity.p_inter)
      target = conn.mlp_param_count(self.num_features, widths, self.num_classes, density)
      widths = (
        conn.param_matched_width(self.num_features, self.num_hidden, self.num_classes, target),
      ) * self.num_hidden
    return dataclasses.replace(self, widths=widths)

  def build(self, connectivity: conn.ConnectivitySpec) -> nn.Module:
    """The model; its sparse layers are TiledDense when connectivity.inter is 'tiles'."""
    plans = _tile_plans(self, connectivity)
    return G2GNet(
      widths=self.widths,
      num_classes=self.num_classes,
      patch_grid=self.patch_grid,
      patch_channels=self.patch_channels,
      feature_order=self.feature_order,
      kernel_init=self.kernel_init,
      tile_plans=tuple(plans.get(f'head/hidden_{k}/kernel') for k in range(len(self.widths))) if plans else (),
    )


@dataclasses.dataclass(frozen=True)
class MixerSpec(ModelSpec):
  """An MLP-Mixer for small images, whose token- and channel-mixing MLPs may be sparse."""

  KIND: ClassVar[str] = 'mixer'
  SPARSE_KERNELS: ClassVar[str] = 'block_*/*_mlp/Dense_*/kernel'
  HEAD: ClassVar[str] = 'block_*/*_mlp/*'

  mixer_blocks: int = field(2, Int(1), 'blocks of token mixing then channel mixing')
  mixer_channels: int = field(128, Int(1), 'channels per token (patch_grid**2 tokens)')
  mixer_tokens_mlp: int = field(64, Int(1), 'hidden width of the token-mixing MLPs')
  mixer_channels_mlp: int = field(256, Int(1), 'hidden width of the channel-mixing MLPs')

  @property
  def runs(self) -> dict[str, int]:
    t, c = self.num_patches, self.mixer_channels
    return {'stem': t, 'block_*/token_mlp/*': c, 'block_*/channel_mlp/*': t}

  def sparse_layers(self, pattern: str = '*') -> list[tuple[str, int, int]]:
    t, c = self.num_patches, self.mixer_channels
    layers = []
    for b in range(self.mixer_blocks):
      for mlp, n, hidden in (('token_mlp', t, self.mixer_tokens_mlp), ('channel_mlp', c, self.mixer_channels_mlp)):
        layers += [(f'block_{b}/{mlp}/Dense_0/kernel', n, hidden), (f'block_{b}/{mlp}/Dense_1/kernel', hidden, n)]
    layers = sorted(layers, key=lambda layer: conn.natural_key(tuple(layer[0].split('/'))))
    return [layer for layer in layers if fnmatch.fnmatchcase(layer[0], pattern)]

  def size_field(self, path: str, side: str) -> str:
    _, mlp, dense, _ = path.split('/')
    outer = (dense == 'Dense_0') == (side == 'input')  # an MLP block maps the outer width to its hidden one and back
    if mlp == 'token_mlp':
      return 'model.patch_grid**2 (the token count)' if outer else 'model.mixer_tokens_mlp'
    return 'model.mixer_channels' if outer else 'model.mixer_channels_mlp'

  def summary(self) -> str:
    return f'mixer of {self.num_patches} tokens x {self.mixer_channels} channels'

  def head_params(self, pattern: str = '', density: float = 1.0) -> float:
    """The MLP blocks' params (the head), the kernels `pattern` matches counted at `density`."""
    sparse = {path for path, _, _ in self.sparse_layers(pattern)} if pattern else set()
    total = 0.0
    for b in range(self.mixer_blocks):
      mlps = (
        ('token_mlp', self.num_patches, self.mixer_tokens_mlp),
        ('channel_mlp', self.mixer_channels, self.mixer_channels_mlp),
      )
      for mlp, n, hidden in mlps:
        for k in (0, 1):
          total += n * hidden * (density if f'block_{b}/{mlp}/Dense_{k}/kernel' in sparse else 1.0)
        total += hidden + n  # the two biases
    return total

  def resolved(self, connectivity: conn.ConnectivitySpec) -> 'MixerSpec':
    """The spec with its MLP widths: the configured ones, or (FC v1) those of the dense Mixer whose
    head params come nearest the G2G Mixer's that makes connectivity.sparse_kernels sparse: the
    MLPs the pattern touches narrowed by one common factor, the others kept."""
    if self.width_rule != 'match_g2g_params':
      return self
    density = conn.expected_density(connectivity.num_groups, connectivity.p_intra, connectivity.p_inter)
    target = self.head_params(connectivity.sparse_kernels, density)
    touched = {path.split('/')[1] for path, _, _ in self.sparse_layers(connectivity.sparse_kernels)}

    def narrowed(f):
      tokens = max(1, round(f * self.mixer_tokens_mlp)) if 'token_mlp' in touched else self.mixer_tokens_mlp
      channels = max(1, round(f * self.mixer_channels_mlp)) if 'channel_mlp' in touched else self.mixer_channels_mlp
      return dataclasses.replace(self, mixer_tokens_mlp=tokens, mixer_channels_mlp=channels)

    candidates = [narrowed(k / 4096) for k in range(1, 4097)]
    errors = [abs(c.head_params() - target) for c in candidates]
    return candidates[errors.index(min(errors))]

  def build(self, connectivity: conn.ConnectivitySpec) -> nn.Module:
    return Mixer(
      num_classes=self.num_classes,
      patch_grid=self.patch_grid,
      channels=self.mixer_channels,
      num_blocks=self.mixer_blocks,
      tokens_mlp=self.mixer_tokens_mlp,
      channels_mlp=self.mixer_channels_mlp,
      kernel_init=self.kernel_init,
      tile_plans=tuple(sorted(_tile_plans(self, connectivity).items())),
    )


FAMILIES = {spec.KIND: spec for spec in (G2GNetSpec, MixerSpec)}


@dataclasses.dataclass(frozen=True)
class ModelChoice:
  """The config.model field that picks the family (the section holds every family's fields)."""

  kind: str = field(
    'g2gnet',
    Choice(tuple(FAMILIES)),
    "'g2gnet' (patch conv + MLP head, the paper's) | 'mixer' (configs/cifar10_mixer.py)",
  )


def _tile_plans(spec: ModelSpec, connectivity: conn.ConnectivitySpec) -> dict:
  """{kernel path: TilePlan} of the layers the connectivity tiles ({} unless inter is 'tiles')."""
  if connectivity.inter != 'tiles':
    return {}
  chosen = spec.sparse_layers(connectivity.sparse_kernels)
  return {path: conn.plan_layer(a, b, k, connectivity) for k, (path, a, b) in enumerate(chosen)}


def kernel_init(name: str, in_axis=-2, out_axis=-1) -> nn.initializers.Initializer:
  scale, distribution = KERNEL_INITS[name]
  return nn.initializers.variance_scaling(scale, 'fan_in', distribution, in_axis=in_axis, out_axis=out_axis)


def tiled_init(name: str) -> nn.initializers.Initializer:
  """kernel_init for a TiledDense, drawn as [C, K x tile_in, tile_out] (fan-in K x tile_in)."""
  return kernel_init(name, in_axis=1, out_axis=(0, 2))


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
  """

  widths: Sequence[int]
  num_classes: int
  kernel_init: str = 'torch'
  tile_plans: Sequence[TilePlan | None] = ()

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
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
        layer = TiledDense(
          width, plan, feature_major=True, kernel_init=tiled_init(self.kernel_init), name=f'hidden_{k}'
        )
      x = nn.relu(layer(x))
    x = x.T if feature_major else x
    return nn.Dense(self.num_classes, kernel_init=kernel_init(self.kernel_init), name='output')(x)


class G2GNet(nn.Module):
  """Patch encoder + MLP head. Takes float images in [0, 1], shape [B, H, W, C]; returns logits."""

  widths: Sequence[int]
  num_classes: int
  patch_grid: int = 4
  patch_channels: int = 32
  feature_order: str = 'patch_major'
  kernel_init: str = 'torch'
  tile_plans: Sequence[TilePlan | None] = ()

  @nn.compact
  def __call__(self, images: jax.Array) -> jax.Array:
    encoder = PatchEncoder(self.patch_grid, self.patch_channels, self.feature_order, self.kernel_init, name='encoder')
    features = encoder(images)
    return MLPHead(self.widths, self.num_classes, self.kernel_init, self.tile_plans, name='head')(features)


class DenseT(nn.Module):
  """nn.Dense over the first axis: [n_in, N] -> [features, N], the same params (kernel
  [n_in, features], bias) and init. The token-mixing MLP's layout: a GEMM, no transposes."""

  features: int
  kernel_init: nn.initializers.Initializer = nn.initializers.lecun_normal()
  feature_major = True  # what rewiring.layer_activity reads: activations are [neurons, N]

  @nn.compact
  def __call__(self, x_IxN: jax.Array) -> jax.Array:
    kernel = self.param('kernel', self.kernel_init, (x_IxN.shape[0], self.features))
    bias = self.param('bias', nn.initializers.zeros, (self.features,))
    return jax.lax.dot_general(kernel, x_IxN, (((0,), (0,)), ((), ()))) + bias[:, None]


class MlpBlock(nn.Module):
  """Dense (`Dense_0`, to `hidden`) + GELU + Dense (`Dense_1`, back); either may be a
  TiledDense (a TilePlan in `plans`). Over the last axis of x, or with `feature_major`
  over the first ([neurons, N])."""

  hidden: int
  kernel_init: str = 'torch'
  plans: tuple = (None, None)
  feature_major: bool = False

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    outer = x.shape[0] if self.feature_major else x.shape[-1]
    for k, features in enumerate((self.hidden, outer)):
      if self.plans[k] is not None:
        layer = TiledDense(
          features, self.plans[k], self.feature_major, kernel_init=tiled_init(self.kernel_init), name=f'Dense_{k}'
        )
      elif self.feature_major:
        layer = DenseT(features, kernel_init=kernel_init(self.kernel_init), name=f'Dense_{k}')
      else:
        layer = nn.Dense(features, kernel_init=kernel_init(self.kernel_init), name=f'Dense_{k}')
      x = layer(x)
      x = nn.gelu(x) if k == 0 else x
    return x


class MixerBlock(nn.Module):
  """Token mixing (an MLP across the patches, `token_mlp`) then channel mixing (an MLP across
  channels, `channel_mlp`), each after a LayerNorm and with a residual. x is [tokens, B,
  channels]: both MLPs are then plain matmuls (the token MLP reads x as [tokens, B x channels]
  feature-major, the channel MLP as [tokens x B, channels]), with no transposes."""

  tokens_mlp: int
  channels_mlp: int
  kernel_init: str = 'torch'
  plans: dict | None = None  # {'token_mlp': (plan_0, plan_1), 'channel_mlp': ...}: tiled layers

  @nn.compact
  def __call__(self, x_TxBxC: jax.Array) -> jax.Array:
    t, b, c = x_TxBxC.shape
    plans = self.plans or {}
    y = nn.LayerNorm(name='norm_0')(x_TxBxC).reshape(t, b * c)
    token = MlpBlock(
      self.tokens_mlp, self.kernel_init, plans.get('token_mlp', (None, None)), feature_major=True, name='token_mlp'
    )
    x = x_TxBxC + token(y).reshape(t, b, c)
    y = nn.LayerNorm(name='norm_1')(x)
    channel = MlpBlock(self.channels_mlp, self.kernel_init, plans.get('channel_mlp', (None, None)), name='channel_mlp')
    return x + channel(y)


class PatchStem(nn.Module):
  """nn.Conv with kernel = stride = patch size (the same params and init), computed as one
  matmul of the patches, in the layout the Mixer runs in: [tokens, B, channels]."""

  features: int
  grid: int
  kernel_init: nn.initializers.Initializer = nn.initializers.lecun_normal()

  @nn.compact
  def __call__(self, images_BxHxWxC: jax.Array) -> jax.Array:
    b, h, w, c = images_BxHxWxC.shape
    ph, pw = h // self.grid, w // self.grid
    kernel = self.param('kernel', self.kernel_init, (ph, pw, c, self.features))
    bias = self.param('bias', nn.initializers.zeros, (self.features,))
    patches = images_BxHxWxC.reshape(b, self.grid, ph, self.grid, pw, c).transpose(1, 3, 0, 2, 4, 5)
    patches = patches.reshape(self.grid * self.grid, b, ph * pw * c)
    return patches @ kernel.reshape(ph * pw * c, self.features) + bias[None, None, :]


class Mixer(nn.Module):
  """MLP-Mixer (Tolstikhin et al., 2021) for small images: a patch-embedding conv (`stem`),
  MixerBlocks (`block_b`), a LayerNorm, mean pooling over patches and a dense `output`.
  Returns logits."""

  num_classes: int
  patch_grid: int = 4
  channels: int = 128
  num_blocks: int = 2
  tokens_mlp: int = 64
  channels_mlp: int = 256
  kernel_init: str = 'torch'
  tile_plans: tuple = ()  # ((kernel path, TilePlan), ...) for the tiled layers

  @nn.compact
  def __call__(self, images: jax.Array) -> jax.Array:
    stem = PatchStem(self.channels, self.patch_grid, kernel_init(self.kernel_init), name='stem')
    x = stem(images)  # [tokens, B, channels]
    plans = dict(self.tile_plans)
    for i in range(self.num_blocks):
      mine = {
        mlp: tuple(plans.get(f'block_{i}/{mlp}/Dense_{k}/kernel') for k in (0, 1))
        for mlp in ('token_mlp', 'channel_mlp')
      }
      x = MixerBlock(self.tokens_mlp, self.channels_mlp, self.kernel_init, mine, name=f'block_{i}')(x)
    x = nn.LayerNorm(name='norm')(x).mean(axis=0)
    return nn.Dense(self.num_classes, kernel_init=kernel_init(self.kernel_init), name='output')(x)
