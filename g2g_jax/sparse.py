"""G2G connectivity for any Flax (Linen) model: choose sparse kernels by path, draw masks,
keep pruned weights at zero in your own optax step, and rewire.

  params = model.init(key, x)['params']
  params, sparsity = sparse.sparsify(params, ConnectivitySpec(..., sparse_kernels='*Mlp*/Dense_*/kernel'), seed=0)
  grads = sparse.apply_masks(grads, sparsity.masks)       # in your train step, before tx.update
  params, opt_state, sparsity, info = sparse.rewire(...)  # every so many steps (rewiring.RewireSpec)

The project's own G2GNet and training loop are built on the same functions.
"""

import jax
import jax.numpy as jnp
import numpy as np

from g2g_jax import connectivity as conn
from g2g_jax import rewiring, tiles
from g2g_jax.connectivity import ConnectivitySpec
from g2g_jax.rewiring import RewireSpec, layer_activity, rewire
from g2g_jax.state import Sparsity, apply_masks
from g2g_jax.tiles import TiledDense, plan_layer

__all__ = [
  'ConnectivitySpec',
  'RewireSpec',
  'Sparsity',
  'TiledDense',
  'apply_masks',
  'layer_activity',
  'plan_layer',
  'rewire',
  'sparsify',
]


def sparsify(params, spec: ConnectivitySpec, seed: int, layout=None) -> tuple[dict, Sparsity]:
  """Draws the masks of the kernels matching spec.sparse_kernels (their layout too, for
  TiledDense layers: pass the model's 'layout' collection), zeroes the pruned weights and
  rescales each output's others to its active fan-in (sqrt(n_in / fan_in)).

  Returns the params and the Sparsity (masks, groups, layout, active edges) to train with.
  """
  if layout is None:
    masks = conn.make_masks(params, spec, seed)
  else:
    masks, layout = tiles.make_masks_and_layout(params, layout, spec, seed)

  def rescale(p, m):
    if m is None:
      return p
    return jnp.asarray((tiles.rescale_init if p.ndim == 4 else conn.rescale_init)(np.asarray(p), m))

  def as_array(m):
    return None if m is None else jnp.asarray(m)

  def none_leaf(x):
    return x is None

  params = jax.tree.map(rescale, params, masks)
  masks = jax.tree.map(as_array, masks, is_leaf=none_leaf)
  groups = conn.make_groups(params, spec, seed)
  return params, Sparsity(
    masks=masks,
    last_grown=jax.tree.map(lambda m: None if m is None else jnp.zeros_like(m), masks, is_leaf=none_leaf),
    groups=None if groups is None else jax.tree.map(jnp.asarray, groups),
    layout=layout,
    active_edges=rewiring.count_active(masks),
  )
