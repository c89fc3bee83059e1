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
