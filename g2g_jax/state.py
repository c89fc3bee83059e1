"""TrainState (the step, params, optimizer state, connectivity masks and base RNG key) and
Sparsity, what sparse training threads through any model's training beside its params."""

from typing import Any

import jax
import jax.numpy as jnp
from flax import struct
from flax.training import train_state

# Every random stream a run draws from, each kept apart by its number, so that changing how
# one is drawn never changes another. numpy streams: np.random.default_rng([seed, number, ...]);
# jax streams: jax.random.fold_in(state.key, number), apart from the steps' fold_in(key, step).
STREAMS = {
  'groups': 1,  # numpy: random groupings (connectivity.layer_groups)
  'edges': 2,  # numpy: Bernoulli edges of masks (connectivity.make_layer_mask)
  'shuffle': 3,  # numpy: each epoch's order of the training set (input_pipeline.epoch_order)
  'tiles': 4,  # numpy: which inter-group tiles a tiled layer reads (tiles.make_layout)
  'tile_edges': 5,  # numpy: edges inside a tiled layer's present tiles
  'synthetic': 7,  # numpy, from the data's own seed: synthetic data (data.make_synthetic)
  'rewire': 1,  # jax: the mask updates' keys (fold_in of the run's key, then of the step)
}


class TrainState(train_state.TrainState):
  """Flax's TrainState plus what G2GNet threads through training.

  masks: a tree shaped like `params` with a bool array for every sparse kernel and
    None for dense leaves. Pass params first in tree maps: `jax.tree.map(f, params,
    masks)` calls f(p, None) on dense leaves.
  key: the run's base PRNG key; per-step keys are `fold_in(key, step)`, so a resumed
    run draws exactly what an uninterrupted one would.
  last_grown: shaped like `masks`, the edges grown by the latest mask update (all
    False before any), for the turnover of the next one.
  layout: the index arrays of tiled layers: which input tiles each output tile reads.
  groups: the group label of every neuron on both sides of each (untiled) sparse layer,
    for DST's 'same_kind' growth and intra / inter counts; None without a grouping.
  active_edges: static, the active edges of each sparse layer in depth order (the most of
    any replica when states are stacked). Mask updates keep them constant.
  """

  masks: Any
  key: jax.Array
  last_grown: Any
  layout: Any = None  # the 'layout' collection of tiled layers (tiles.py); None without any
  groups: Any = None  # {'hidden_k': {'in': g_in, 'out': g_out}} group labels of untiled sparse layers
  active_edges: tuple[int, ...] = struct.field(pytree_node=False, default=())

  def variables(self, params=None) -> dict:
    """What apply_fn takes: the params (these or the state's) and the layout, if any."""
    params = self.params if params is None else params
    return {'params': params} if self.layout is None else {'params': params, 'layout': self.layout}

  def sparsity(self) -> 'Sparsity':
    return Sparsity(self.masks, self.last_grown, self.groups, self.layout, self.active_edges)


@struct.dataclass
class Sparsity:
  """A model's sparse connectivity, as rewiring.rewire reads and returns it.

  masks: params-shaped, a bool array per sparse kernel and None elsewhere.
  last_grown: masks-shaped, the edges the latest update grew (for its turnover).
  groups: {layer name: {'in': labels, 'out': labels}} of untiled sparse layers, or None.
  layout: the 'layout' collection of tiled layers, or None.
  active_edges: static, each sparse layer's active edges (constant under rewiring).
  """

  masks: Any
  last_grown: Any
  groups: Any = None
  layout: Any = None
  active_edges: tuple[int, ...] = struct.field(pytree_node=False, default=())


def apply_masks(tree, masks):
  """Zeroes the masked-out entries of a params-shaped tree (grads or params)."""
  return jax.tree.map(lambda x, m: x if m is None else jnp.where(m, x, 0), tree, masks)
