"""The tiled layer: a sparse Dense layer that computes only the tiles its layout says are present.

connectivity.make_layout draws a tiled layer's layout (which input tiles each output tile
reads, its neurons' group order) and its block mask; `TiledDense` reads that layout from the
'layout' variable collection and computes only the present tiles: a gather of input tiles
and a batched matmul, about 1 / density fewer FLOPs than the dense layer. The kernel is
[C, tile_out, K, tile_in] (each output neuron's K x tile_in inputs contiguous: the layout
XLA's CPU matmuls want, no transposes of kernel or gradient). Activations are computed
feature-major ([neurons, batch]), the layout the batched matmuls produce and read. Every
input tile feeds the same number of output tiles, so the backward pass is a gather too (no
scatter-add). Moving tiles changes the layout's values, never a shape: nothing retraces.
`to_dense` and `to_blocks` convert between a tiled kernel and the [n_in, n_out] matrix it
stands for.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from g2g_jax.connectivity import TilePlan, from_ckio, to_ckio

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
  the index arrays of connectivity.make_layout, which sparse.sparsify fills. Equal to a Dense
  layer whose kernel is `to_dense`. Takes and returns [..., neurons] like nn.Dense (any
  leading axes), or with `feature_major` [neurons, batch], the layout it computes in
  (G2GNet's head keeps it between tiled layers). `plan` comes from connectivity.plan_layer.
  """

  features: int
  plan: TilePlan
  feature_major: bool = False
  # Draws the kernel as [C, K x tile_in, tile_out], stored as [C, tile_out, K, tile_in]: the flat
  # order of [C, K, tile_in, tile_out] (the seed's weights of the kernel's older layout).
  # in_axis=1 is the fan-in K x tile_in; a 3-D draw compiles faster than a 4-D one.
  kernel_init: nn.initializers.Initializer = nn.initializers.lecun_normal(in_axis=1, out_axis=(0, 2))

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    n_in = x.shape[0] if self.feature_major else x.shape[-1]
    shapes = layout_shapes(n_in, self.features, self.plan)
    layout = {
      name: self.variable('layout', name, jnp.zeros, shape, dtype).value for name, (shape, dtype) in shapes.items()
    }

    def init(key, shape, dtype=jnp.float32):
      c, o, k_, i = shape
      return from_ckio(self.kernel_init(key, (c, k_ * i, o), dtype).reshape(c, k_, i, o))

    kernel = self.param('kernel', init, kernel_shape(n_in, self.features, self.plan))
    bias = self.param('bias', nn.initializers.zeros, (self.features,))
    return tiled_apply(x, kernel, bias, layout, self.plan, self.feature_major)


def kernel_shape(n_in: int, n_out: int, plan: TilePlan) -> tuple[int, int, int, int]:
  """A tiled kernel's shape [C, tile_out, K, tile_in]."""
  return n_out // plan.tile_out, plan.tile_out, plan.num_slots, plan.tile_in


LAYOUT_NAMES = ('idx', 'rev', 'intra', 'in_order', 'in_inverse', 'out_order', 'out_inverse')


def layout_shapes(n_in: int, n_out: int, plan: TilePlan) -> dict:
  """{name: (shape, dtype)} of a tiled layer's layout arrays (connectivity.make_layout fills them)."""
  c_tiles, r_tiles = n_out // plan.tile_out, n_in // plan.tile_in
  k = plan.num_slots
  return {
    'idx': ((c_tiles, k), jnp.int32),
    'rev': ((r_tiles, c_tiles * k // r_tiles), jnp.int32),
    'intra': ((c_tiles, k), jnp.bool_),
    'in_order': ((n_in,), jnp.int32),
    'in_inverse': ((n_in,), jnp.int32),
    'out_order': ((n_out,), jnp.int32),
    'out_inverse': ((n_out,), jnp.int32),
  }


def tiled_apply(x, kernel_CxOxKxI, bias, layout: dict, plan: TilePlan, feature_major: bool = False) -> jax.Array:
  """The tiled layer's output: x [..., n_in] (or [n_in, batch] feature-major) through the present
  tiles of the kernel, plus the bias. TiledDense (Linen) and sparse_nnx.TiledLinear call it."""
  lead = x.shape[:-1]
  x = x if feature_major else x.reshape(-1, x.shape[-1]).T
  n_in, b = x.shape
  features = bias.shape[0]
  r_tiles = n_in // plan.tile_in
  num_groups = r_tiles // plan.num_intra  # num_intra input tiles per group
  if plan.permute_in == 'interleave':
    x = interleave(x, n_in // num_groups)
  elif plan.permute_in == 'gather':
    x = permute(x, layout['in_order'], layout['in_inverse'])
  tiles = gather_tiles(x.reshape(r_tiles, plan.tile_in, b), layout['idx'], layout['rev'])
  y = tile_matmul(kernel_CxOxKxI, tiles).reshape(features, b)
  if plan.permute_out == 'interleave':
    y = interleave(y, num_groups)
  elif plan.permute_out == 'gather':
    y = permute(y, layout['out_inverse'], layout['out_order'])
  y = y + bias[:, None]
  return y if feature_major else y.T.reshape(*lead, features)


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
