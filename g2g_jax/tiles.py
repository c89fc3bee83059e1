"""Tiled inter-group connectivity: layouts, the block-sparse layer, and its masked form.

With `connectivity.inter = 'tiles'` a sparse layer is stored and computed as tiles:
neurons are ordered by group on each side and cut into tiles (tile_in neurons on the
input side, tile_out on the output side; `tile_size = 0` makes a group one tile). Each
output tile receives the same number K of input tiles: all the tiles of its own group
(intra, edges Bernoulli(p) inside them) and K_inter tiles of other groups (inter, edges
Bernoulli(tile_density) inside), K_inter = round(p' x (G - 1) x tiles per input group /
tile_density), so the expected density matches the Bernoulli layer up to that rounding.
With tile_density = 1 present tiles are full and DST can only re-initialise edges inside
them; a lower tile_density leaves absent edges in present tiles for DST to grow into.
The kernel is [C, tile_out, K, tile_in] (each output neuron's K x tile_in inputs
contiguous: the layout XLA's CPU matmuls want, no transposes of kernel or gradient) and
only present tiles are computed: a gather of input tiles and a batched matmul, about
1 / density fewer FLOPs than the dense layer. Activations are computed feature-major
([neurons, batch]), the layout the batched matmuls produce and read.
Large tiles make large matmuls: on a CPU group-sized tiles are the fast choice.

Inter tiles are chosen per layer as K_inter distinct (group offset d, shift s) pairs:
output tile w of group g reads input tile sigma_d((w + s) mod S_in) of group g + d, with
sigma_d a random permutation per offset. So every input tile also feeds the same number
of output tiles, and the backward pass is a gather too (no scatter-add). The layout is
an index array in the 'layout' variable collection: moving tiles changes its values,
never a shape, so nothing retraces.
"""

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from g2g_jax import connectivity as conn
from g2g_jax.state import STREAMS

INTERS = ('bernoulli', 'tiles')


@dataclasses.dataclass(frozen=True)
class TilePlan:
  """Static shape facts of one tiled layer (what the model needs to build it)."""

  tile_in: int  # input neurons per tile
  tile_out: int  # output neurons per tile
  num_slots: int  # K: input tiles per output tile
  num_intra: int  # S_in: the first num_intra slots are the own group's tiles
  # How inputs (outputs) are put in group order: 'none' (groups contiguous), 'interleave'
  # (neuron i in group i mod G, the mixer's odd layers: a reshape and transpose) or
  # 'gather' (any other grouping: a gather by the layout's in_order / out_order).
  permute_in: str
  permute_out: str


def tile_sides(n_in: int, n_out: int, num_groups: int, tile_size: int) -> tuple[int, int]:
  """(tile_in, tile_out): tile_size on both sides, or a whole group per side when it is 0."""
  if tile_size == 0:
    return n_in // num_groups, n_out // num_groups
  return tile_size, tile_size


def _permute_kind(grouping: str, layer: int) -> str:
  """How a side's neurons are put in group order under a grouping (TilePlan.permute_in / out)."""
  if grouping == 'index' or (grouping == 'mixer' and layer % 2 == 0):
    return 'none'  # contiguous groups
  if grouping == 'mixer':
    return 'interleave'  # neuron i in group i mod G
  return 'gather'  # random groups


def plan_layer(n_in: int, n_out: int, layer: int, spec: conn.ConnectivitySpec) -> TilePlan:
  """The static shape facts of tiled layer `layer`: they depend on the sizes and the spec, not the seed."""
  g = spec.num_groups
  t_in, t_out = tile_sides(n_in, n_out, g, spec.tile_size)
  s_in = n_in // g // t_in
  k_inter = min(int(round(spec.p_inter * (g - 1) * s_in / spec.tile_density)), (g - 1) * s_in)
  kind = _permute_kind(spec.grouping, layer)
  return TilePlan(t_in, t_out, s_in + k_inter, s_in, kind, kind)


def check_sizes(n_in: int, n_out: int, num_groups: int, tile_size: int) -> str | None:
  """Why a layer cannot be tiled, or None when it can."""
  for side, n in (('input', n_in), ('output', n_out)):
    if n % num_groups:
      return f'the {side} width {n} must be a multiple of num_groups ({num_groups})'
    if tile_size and (n // num_groups) % tile_size:
      return f'the {side} width {n} must be a multiple of num_groups x tile_size ({num_groups} x {tile_size})'
  t_in, t_out = tile_sides(n_in, n_out, num_groups, tile_size)
  s_in, s_out = n_in // num_groups // t_in, n_out // num_groups // t_out
  if s_out % s_in:
    return f'each group must have a multiple of {s_in} output tiles (it has {s_out}), for regular tiles'
  return None


def make_layout(n_in: int, n_out: int, layer: int, spec: conn.ConnectivitySpec, seed: int):
  """(layout arrays, bool block mask [C, tile_out, K, tile_in]) of one layer, from the seed."""
  plan = plan_layer(n_in, n_out, layer, spec)
  g, t_in, t_out = spec.num_groups, plan.tile_in, plan.tile_out
  r_tiles, c_tiles = n_in // t_in, n_out // t_out
  s_in, s_out = r_tiles // g, c_tiles // g
  rng = np.random.default_rng([seed, STREAMS['tiles'], layer])
  pairs = [(d, s) for d in range(1, g) for s in range(s_in)]
  chosen = [pairs[i] for i in sorted(rng.choice(len(pairs), plan.num_slots - s_in, replace=False))]
  sigma = {d: rng.permutation(s_in) for d in range(1, g)}

  idx = np.zeros((c_tiles, plan.num_slots), np.int32)
  for c in range(c_tiles):
    group, w = divmod(c, s_out)
    idx[c, :s_in] = group * s_in + np.arange(s_in)
    for j, (d, s) in enumerate(chosen):
      idx[c, s_in + j] = ((group + d) % g) * s_in + sigma[d][(w + s) % s_in]
  intra = (idx // s_in) == (np.arange(c_tiles) // s_out)[:, None]

  g_in, g_out = conn.layer_groups(n_in, n_out, layer, spec, seed)
  in_order, out_order = np.argsort(g_in, kind='stable'), np.argsort(g_out, kind='stable')
  edge_rng = np.random.default_rng([seed, STREAMS['tile_edges'], layer])
  mask = np.ones((c_tiles, plan.num_slots, t_in, t_out), bool)
  mask[intra] = edge_rng.random((int(intra.sum()), t_in, t_out)) < spec.p_intra
  mask[~intra] = edge_rng.random((int((~intra).sum()), t_in, t_out)) < spec.tile_density
  mask = from_ckio(mask)
  layout = {
    'idx': idx,
    'rev': reverse_index(idx, r_tiles),
    'intra': intra,
    'in_order': in_order.astype(np.int32),
    'in_inverse': np.argsort(in_order).astype(np.int32),
    'out_order': out_order.astype(np.int32),
    'out_inverse': np.argsort(out_order).astype(np.int32),
  }
  return layout, mask


def from_ckio(blocks_CxKxIxO):
  """[C, K, tile_in, tile_out] (one [in, out] matrix per tile) -> the kernel layout [C, tile_out, K, tile_in]."""
  return blocks_CxKxIxO.transpose(0, 3, 1, 2)


def to_ckio(blocks_CxOxKxI):
  """The kernel layout [C, tile_out, K, tile_in] -> [C, K, tile_in, tile_out]."""
  return blocks_CxOxKxI.transpose(0, 2, 3, 1)


def reverse_index(idx: np.ndarray, r_tiles: int) -> np.ndarray:
  """rev[r] lists the flat slots c * K + k that read input tile r (same count for every r)."""
  flat = idx.ravel()
  order = np.argsort(flat, kind='stable')
  counts = np.bincount(flat, minlength=r_tiles)
  if counts.min() != counts.max():
    raise ValueError(f'irregular tile layout: input tiles are read {counts.min()} to {counts.max()} times')
  return order.reshape(r_tiles, counts[0]).astype(np.int32)


# ---------------------------------------------------------------------------------
# The layer's pieces. Activations are feature-major, [neurons, batch]: the layout the
# batched tile matmuls read and write, so tiled layers hand activations on without
# relayout copies, and moving neurons (a gather, the mixer's interleave) moves whole rows.


@jax.custom_vjp
def gather_tiles(x_RxTxB: jax.Array, idx: jax.Array, rev: jax.Array) -> jax.Array:
  """[C, K, T, B]: the input tiles each output tile reads. The backward pass is a gather
  by `rev` and a sum, not a scatter-add."""
  return jnp.take(x_RxTxB, idx, axis=0, mode='clip')  # in bounds by construction: no fill mask


def _gather_fwd(x, idx, rev):
  return gather_tiles(x, idx, rev), (idx, rev)


def _gather_bwd(res, g_CxKxTxB):
  _, rev = res
  c, k, t, b = g_CxKxTxB.shape
  flat = g_CxKxTxB.reshape(c * k, t, b)
  return jnp.take(flat, rev, axis=0, mode='clip').sum(axis=1), None, None  # [R, U, T, B] -> [R, T, B]


gather_tiles.defvjp(_gather_fwd, _gather_bwd)


@jax.custom_vjp
def tile_matmul(kernel_CxOxKxI: jax.Array, tiles_CxKxIxB: jax.Array) -> jax.Array:
  """[C, tile_out, B]: each output tile's kernel times its present input tiles.

  The backward pass is written out so that each of its two matmuls reads its operands
  where they lie (XLA's CPU dots take either operand transposed). Left to autodiff, XLA
  copied the tiles into a batch-major layout for the kernel's gradient.
  """
  c, o, k, i = kernel_CxOxKxI.shape
  return jnp.einsum('cst,ctb->csb', kernel_CxOxKxI.reshape(c, o, k * i), tiles_CxKxIxB.reshape(c, k * i, -1))


def _tile_matmul_fwd(kernel, tiles):
  return tile_matmul(kernel, tiles), (kernel, tiles)


def _tile_matmul_bwd(res, g_CxOxB):
  kernel, tiles = res
  c, o, k, i = kernel.shape
  w, x = kernel.reshape(c, o, k * i), tiles.reshape(c, k * i, -1)
  d_kernel = jnp.einsum('csb,ctb->cst', g_CxOxB, x).reshape(kernel.shape)
  d_tiles = jnp.einsum('cst,csb->ctb', w, g_CxOxB).reshape(tiles.shape)
  return d_kernel, d_tiles


tile_matmul.defvjp(_tile_matmul_fwd, _tile_matmul_bwd)


def permute(x_NxB: jax.Array, order: jax.Array, inverse: jax.Array) -> jax.Array:
  """x[order] for a permutation: gather_tiles with one-neuron tiles, so the backward
  pass is a gather by `inverse`, not a scatter."""
  return gather_tiles(x_NxB[:, None], order[:, None], inverse[:, None])[:, 0, 0]


def interleave(x_NxB: jax.Array, rows: int) -> jax.Array:
  """x[order] for the permutation that reads the neurons as [rows, n / rows] and transposes.

  With rows = n / G it puts interleaved groups (neuron i in group i mod G) in group
  order; with rows = G it undoes that. A transpose of whole rows: cheaper than a gather.
  """
  n, b = x_NxB.shape
  return x_NxB.reshape(rows, n // rows, b).transpose(1, 0, 2).reshape(n, b)


class TiledDense(nn.Module):
  """A sparse Dense layer that computes only its present tiles: a drop-in for nn.Dense.

  Params: kernel [C, tile_out, K, tile_in], bias [features]. Layout (collection 'layout'):
  the index arrays of make_layout, which `make_masks_and_layout` fills. Equal to a Dense
  layer whose kernel is `to_dense`. Takes and returns [..., neurons] like nn.Dense (any
  leading axes), or with `feature_major` [neurons, batch], the layout it computes in
  (G2GNet's head keeps it between tiled layers). `plan` comes from `plan_layer`.
  """

  features: int
  plan: TilePlan
  feature_major: bool = False
  # Draws the kernel as [C, K x tile_in, tile_out], then stored as [C, tile_out, K, tile_in]:
  # the flat order of [C, K, tile_in, tile_out], so a seed gives the weights it gave before
  # the kernel's layout changed. in_axis=1 is the fan-in K x tile_in. A 3-D draw, because
  # XLA:CPU took 0.74 s to compile a 4-D one (0.28 s for 3-D), at every run's start.
  kernel_init: nn.initializers.Initializer = nn.initializers.lecun_normal(in_axis=1, out_axis=(0, 2))

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    lead = x.shape[:-1]
    x = x if self.feature_major else x.reshape(-1, x.shape[-1]).T
    n_in, b = x.shape
    t_in, t_out, k = self.plan.tile_in, self.plan.tile_out, self.plan.num_slots
    c_tiles, r_tiles = self.features // t_out, n_in // t_in
    u = c_tiles * k // r_tiles

    def zeros(shape):
      return lambda: jnp.zeros(shape, jnp.int32)

    idx = self.variable('layout', 'idx', zeros((c_tiles, k))).value
    rev = self.variable('layout', 'rev', zeros((r_tiles, u))).value
    self.variable('layout', 'intra', lambda: jnp.zeros((c_tiles, k), bool))
    in_order = self.variable('layout', 'in_order', zeros((n_in,))).value
    in_inverse = self.variable('layout', 'in_inverse', zeros((n_in,))).value
    out_order = self.variable('layout', 'out_order', zeros((self.features,))).value
    out_inverse = self.variable('layout', 'out_inverse', zeros((self.features,))).value

    def init(key, shape, dtype=jnp.float32):
      c, o, k_, i = shape
      return from_ckio(self.kernel_init(key, (c, k_ * i, o), dtype).reshape(c, k_, i, o))

    kernel = self.param('kernel', init, (c_tiles, t_out, k, t_in))
    bias = self.param('bias', nn.initializers.zeros, (self.features,))
    num_groups = r_tiles // self.plan.num_intra  # num_intra input tiles per group
    if self.plan.permute_in == 'interleave':
      x = interleave(x, n_in // num_groups)
    elif self.plan.permute_in == 'gather':
      x = permute(x, in_order, in_inverse)
    tiles = gather_tiles(x.reshape(r_tiles, t_in, b), idx, rev)
    y = tile_matmul(kernel, tiles).reshape(self.features, b)
    if self.plan.permute_out == 'interleave':
      y = interleave(y, num_groups)
    elif self.plan.permute_out == 'gather':
      y = permute(y, out_inverse, out_order)
    y = y + bias[:, None]
    return y if self.feature_major else y.T.reshape(*lead, self.features)


def to_dense(blocks_CxOxKxI, layout: dict, n_in: int, n_out: int) -> np.ndarray:
  """The [n_in, n_out] matrix a tiled kernel (or mask) stands for, in neuron order."""
  blocks = to_ckio(np.asarray(blocks_CxOxKxI))
  c_tiles, _, t_in, t_out = blocks.shape
  out = np.zeros((n_in // t_in, t_in, c_tiles, t_out), blocks.dtype)
  idx = np.asarray(layout['idx'])
  for c in range(c_tiles):
    out[idx[c], :, c, :] = blocks[c]
  dense_sorted = out.reshape(n_in, n_out)
  in_order, out_order = np.asarray(layout['in_order']), np.asarray(layout['out_order'])
  dense = np.zeros_like(dense_sorted)
  dense[np.ix_(in_order, out_order)] = dense_sorted
  return dense


def to_blocks(dense_IxO: jax.Array, layout: dict, tile_in: int, tile_out: int) -> jax.Array:
  """The entries of an [n_in, n_out] matrix (a score) at a tiled layer's present tiles."""
  n_in, n_out = dense_IxO.shape
  s = jnp.take(jnp.take(dense_IxO, layout['in_order'], axis=0), layout['out_order'], axis=1)
  s = s.reshape(n_in // tile_in, tile_in, n_out // tile_out, tile_out).transpose(2, 0, 1, 3)  # [C, R, I, O]
  return from_ckio(jnp.take_along_axis(s, layout['idx'][:, :, None, None], axis=1))


def make_masks_and_layout(params, layout, spec: conn.ConnectivitySpec, seed: int):
  """Block masks for the tiled kernels (None elsewhere) and the filled layout collection."""
  flat_p = traverse_util.flatten_dict(params)
  flat_l = traverse_util.flatten_dict(layout)
  masks = {path: None for path in flat_p}
  for k, path in enumerate(conn.sparse_layer_paths(params, spec.sparse_kernels)):
    prefix = path[:-1]
    n_in, n_out = flat_l[(*prefix, 'in_order')].shape[0], flat_l[(*prefix, 'out_order')].shape[0]
    arrays, mask = make_layout(n_in, n_out, k, spec, seed)
    if mask.shape != flat_p[path].shape:
      raise ValueError(f'{"/".join(path)}: layout {mask.shape} does not match the kernel {flat_p[path].shape}')
    masks[path] = mask
    for name, value in arrays.items():
      flat_l[(*prefix, name)] = jnp.asarray(value)
  return traverse_util.unflatten_dict(masks), traverse_util.unflatten_dict(flat_l)


def tile_sizes(kernel_CxOxKxI) -> tuple[int, int]:
  """(tile_in, tile_out) of a tiled kernel."""
  return kernel_CxOxKxI.shape[3], kernel_CxOxKxI.shape[1]


def rescale_init(kernel_CxOxKxI: np.ndarray, mask_CxOxKxI: np.ndarray) -> np.ndarray:
  """conn.rescale_init for a tiled kernel: each output's present weights scaled to its fan-in."""
  c, t_out, k, t_in = kernel_CxOxKxI.shape
  as_2d = lambda a: np.asarray(a).transpose(2, 3, 0, 1).reshape(k * t_in, c * t_out)  # noqa: E731
  scaled = conn.rescale_init(as_2d(kernel_CxOxKxI), as_2d(mask_CxOxKxI))
  return scaled.reshape(k, t_in, c, t_out).transpose(2, 3, 0, 1)
