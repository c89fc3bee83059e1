"""TrainState (the step, params, optimizer state, base RNG key and Sparsity), Sparsity (masks,
groups, tile layouts: what sparse training threads through any model's training), and the
table of the random streams a run draws from."""

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
  'tiles': 4,  # numpy: which inter-group tiles a tiled layer reads (connectivity.make_layout)
  'tile_edges': 5,  # numpy: edges inside a tiled layer's present tiles
  'synthetic': 7,  # numpy, from the data's own seed: synthetic data (data.make_synthetic)
  'rewire': 1,  # jax: the mask updates' keys (fold_in of the run's key, then of the step)
}


@struct.dataclass
class Sparsity:
  """A model's sparse connectivity: what sparse training threads through any model's training
  beside its params, and what rewiring.rewire reads and returns.

  masks: a tree shaped like `params` with a bool array for every sparse kernel and None for
    dense leaves. Pass params first in tree maps: `jax.tree.map(f, params, masks)` calls
    f(p, None) on dense leaves.
  last_grown: shaped like `masks`, the edges grown by the latest mask update (all False
    before any), for the turnover of the next one.
  groups: {layer name: {'in': labels, 'out': labels}}, the group of every neuron on both sides
    of each untiled sparse layer (for 'same_kind' growth and intra / inter counts), or None.
  layout: the 'layout' collection of tiled layers: which input tiles each output tile reads
    (connectivity.make_layout), or None without any.
  active_edges: static, each sparse layer's active edges in natural order (the most of any
    replica when states are stacked); mask updates keep them constant.
  """

  masks: Any
  last_grown: Any
  groups: Any = None
  layout: Any = None
  active_edges: tuple[int, ...] = struct.field(pytree_node=False, default=())

  def variables(self, params) -> dict:
    """What a model's apply takes: the params, and the layout of its tiled layers if any."""
    return {'params': params} if self.layout is None else {'params': params, 'layout': self.layout}


class TrainState(train_state.TrainState):
  """Flax's TrainState plus the run's base PRNG key and the Sparsity it trains with.

  key: per-step keys are `fold_in(key, step)`, so a resumed run draws exactly what an
    uninterrupted one would.
  """

  key: jax.Array
  sparsity: Sparsity

  def variables(self, params=None) -> dict:
    """What apply_fn takes: the params (these or the state's) and the layout, if any."""
    return self.sparsity.variables(self.params if params is None else params)


def apply_masks(tree, masks):
  """Zeroes the masked-out entries of a params-shaped tree (grads or params)."""
  return jax.tree.map(lambda x, m: x if m is None else jnp.where(m, x, 0), tree, masks)
