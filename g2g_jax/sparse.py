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
from flax import traverse_util

from g2g_jax import connectivity as conn
from g2g_jax import rewiring
from g2g_jax.connectivity import ConnectivitySpec, plan_layer
from g2g_jax.rewiring import RewireSpec, layer_activity, rewire
from g2g_jax.state import Sparsity, apply_masks
from g2g_jax.tiles import TiledDense

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


def check(params, spec: ConnectivitySpec, layout=None):
  """A ValueError naming the path, the size and the rule unless spec.sparse_kernels picks
  kernels these params can make sparse: [in, out] matrices (or tiled kernels with a layout),
  each side a multiple of the groups for G2G connectivity."""
  if spec.kind == 'dense':
    return
  if not spec.sparse_kernels:
    raise ValueError(
      "ConnectivitySpec.sparse_kernels is '': name the kernels to make sparse, a pattern over "
      "'/'-joined param paths such as 'head/hidden_*/kernel'"
    )
  flat = traverse_util.flatten_dict(params)
  paths = conn.sparse_layer_paths(params, spec.sparse_kernels)
  if not paths:
    kernels = sorted('/'.join(p) for p, v in flat.items() if np.ndim(v) >= 2)[:6]
    raise ValueError(f'ConnectivitySpec.sparse_kernels = {spec.sparse_kernels!r} matches no param; kernels: {kernels}')
  for path in paths:
    name, shape = '/'.join(path), np.shape(flat[path])
    if conn.layer_layout(layout, path) is not None:
      continue  # a TiledDense kernel: its layout was checked when its plan was made
    if len(shape) != 2:
      raise ValueError(
        f'{name}: shape {shape} matched ConnectivitySpec.sparse_kernels, but only a kernel [in, out] can be made sparse'
      )
    for side, n in zip(('input', 'output'), shape, strict=True):
      if spec.kind == 'g2g' and (n < spec.num_groups or n % spec.num_groups):
        raise ValueError(
          f'{name}: its {side} size {n} must be a multiple of ConnectivitySpec.num_groups ({spec.num_groups}) '
          'for G2G groups'
        )


def sparsify(params, spec: ConnectivitySpec, seed: int, layout=None) -> tuple[dict, Sparsity]:
  """Draws the masks of the kernels matching spec.sparse_kernels (their layout too, for
  TiledDense layers: pass the model's 'layout' collection), zeroes the pruned weights and
  rescales each output's others to its active fan-in (sqrt(n_in / fan_in)).

  Returns the params and the Sparsity (masks, groups, layout, active edges) to train with.
  """
  check(params, spec, layout)
  params, masks, groups, layout = conn.draw(params, spec, seed, layout)

  def as_array(m):
    return None if m is None else jnp.asarray(m)

  def none_leaf(x):
    return x is None

  masks = jax.tree.map(as_array, masks, is_leaf=none_leaf)
  return params, Sparsity(
    masks=masks,
    last_grown=jax.tree.map(lambda m: None if m is None else jnp.zeros_like(m), masks, is_leaf=none_leaf),
    groups=None if groups is None else jax.tree.map(jnp.asarray, groups),
    layout=layout,
    active_edges=rewiring.count_active(masks),
  )
