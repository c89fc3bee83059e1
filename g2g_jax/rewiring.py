"""Dynamic sparse training: prune and grow criteria, Hebbian scores, schedule, and the update.

`rewire(params, opt_state, sparsity, batches, rng, ...)` updates any Linen model's masks
(train.update_masks is it for a TrainState).
For every sparse layer it prunes n = round(fraction x active edges) present edges and
grows n absent ones, so each layer's density is exactly constant. Shapes never depend
on n (selection is by rank, with n a traced number), so a decaying fraction does not
retrace, and neither does `train_step`, which only sees new mask values.

Choices where the paper is silent (see README):
- Growth candidates are the edges absent after pruning (as in RigL), so an edge pruned by
  one criterion may be regrown by another, at zero weight.
- Ties are broken by flat index (lowest first); random criteria rank by uniform noise.
- The Hebbian score is computed on the batches given (unaugmented), per batch, and
  averaged over them.
"""

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax
from flax import traverse_util

from g2g_jax import connectivity as conn
from g2g_jax import schedule, tiles
from g2g_jax.fields import Bool, Choice, Float, Int, check, field

PRUNE = ('none', 'magnitude', 'random', 'hebbian', 'mixed')
GROW = ('none', 'random', 'hebbian', 'gradient')
CANDIDATES = ('all', 'same_kind')
FRACTION_SCHEDULES = ('constant', 'cosine')


@dataclasses.dataclass(frozen=True)
class RewireSpec:
  """When and how masks are rewired (config.rewiring). Off unless both criteria are set."""

  prune: str = field(
    'none', Choice(PRUNE), "'none' | 'magnitude' (SET) | 'random' | 'hebbian' | 'mixed' (thirds: mag, rand, hebb)"
  )
  grow: str = field('none', Choice(GROW), "'none' | 'random' | 'hebbian' | 'gradient' (RigL: largest |dense gradient|)")
  fraction: float = field(
    0.1, Float(0.0, 1.0, lo_open=True), "share of each sparse layer's active edges pruned (and grown) per update"
  )
  fraction_schedule: str = field(
    'constant', Choice(FRACTION_SCHEDULES), "'constant' | 'cosine' (decays to 0 at rewire_end_steps, as RigL)"
  )
  rewire_every_steps: int = field(1000, Int(1), 'optimizer steps between mask updates')
  rewire_start_steps: int = field(0, Int(0), 'first step at which a mask update may run')
  rewire_end_steps: int = field(0, Int(0), 'last step at which a mask update may run; 0 = no end (a run: its end)')
  candidates: str = field(
    'all', Choice(CANDIDATES), "growth among 'all' absent edges | 'same_kind' (intra for intra, inter for inter)"
  )
  hebbian_batches: int = field(1, Int(1), 'the Hebbian / gradient score averages over this many latest batches')
  reset_optimizer_state: bool = field(True, Bool(), 'zero the optimizer moments of pruned and grown entries')

  def __post_init__(self):
    check(self)
    if self.fraction_schedule == 'cosine' and self.enabled and self.rewire_end_steps == 0:
      raise ValueError(
        "RewireSpec.fraction_schedule = 'cosine' decays the fraction to 0 at rewire_end_steps, which is 0 "
        "(no end): set rewire_end_steps to the last step to rewire at (the run's last step, say)"
      )

  @property
  def enabled(self) -> bool:
    return self.prune != 'none' and self.grow != 'none'

  def due(self, step: int) -> bool:
    """Whether an update runs right after optimizer step `step`."""
    return self.enabled and schedule.due(step, self.rewire_every_steps, self.rewire_start_steps, self.rewire_end_steps)

  def fraction_at(self, step):
    if self.fraction_schedule == 'constant':
      return jnp.asarray(self.fraction, jnp.float32)
    span = max(self.rewire_end_steps - self.rewire_start_steps, 1)
    t = jnp.clip((step - self.rewire_start_steps) / span, 0.0, 1.0)
    return self.fraction * 0.5 * (1.0 + jnp.cos(jnp.pi * t))

  def summary(self) -> str:
    return (
      f'prune {self.prune}, grow {self.grow} among {self.candidates} absent edges, fraction {self.fraction} '
      f'({self.fraction_schedule}) every {self.rewire_every_steps} steps in '
      f'[{self.rewire_start_steps}, {self.rewire_end_steps}], scores over {self.hebbian_batches} batch(es), '
      f'reset optimizer state: {self.reset_optimizer_state}'
    )


# ---------------------------------------------------------------------------------
# Scores and selection.


def hebbian_scores(pre_BxI: jax.Array, post_BxO: jax.Array, eps: float = 1e-12) -> jax.Array:
  """CH[i, o]: cosine similarity of neuron i's and neuron o's activations over the batch.

  Post-ReLU activations, not mean-centred, no absolute value. A silent neuron (all
  zeros on the batch) scores 0 with everything.
  """
  dots = pre_BxI.T @ post_BxO
  norms = jnp.linalg.norm(pre_BxI, axis=0)[:, None] * jnp.linalg.norm(post_BxO, axis=0)[None, :]
  return dots / jnp.maximum(norms, eps)


def select_top(score: jax.Array, candidates: jax.Array, n, k_max: int | None = None) -> jax.Array:
  """Bool mask of the n highest-scoring candidates; ties go to the lower flat index.

  n may be a traced integer: the selection takes the top k_max (a static bound on n)
  and keeps the first n, so shapes never depend on n.
  """
  flat = jnp.where(candidates, score, -jnp.inf).ravel()
  k = flat.size if k_max is None else min(k_max, flat.size)  # a small k_max: a partial sort, not a full one
  values, index = jax.lax.top_k(flat, k)
  take = (jnp.arange(k) < n) & (values > -jnp.inf)
  return jnp.zeros(flat.size, bool).at[index].set(take).reshape(score.shape)


def select_bottom(score: jax.Array, candidates: jax.Array, n, k_max: int | None = None) -> jax.Array:
  """Bool mask of the n lowest-scoring candidates."""
  return select_top(-score, candidates, n, k_max)


def prune_layer(criterion: str, mask, kernel, hebbian, key, n, k_max=None) -> jax.Array:
  """Which present edges to remove: n of them, by the criterion."""
  k_rand, k_mixed = jax.random.split(key)
  if criterion == 'magnitude':
    return select_bottom(jnp.abs(kernel), mask, n, k_max)
  if criterion == 'random':
    return select_bottom(jax.random.uniform(k_rand, mask.shape), mask, n, k_max)
  if criterion == 'hebbian':
    return select_bottom(hebbian, mask, n, k_max)
  if criterion == 'mixed':  # a third each by magnitude, at random, by Hebbian score
    n_mag, n_rand = n // 3, n // 3
    pruned = select_bottom(jnp.abs(kernel), mask, n_mag, k_max)
    pruned |= select_bottom(jax.random.uniform(k_mixed, mask.shape), mask & ~pruned, n_rand, k_max)
    return pruned | select_bottom(hebbian, mask & ~pruned, n - n_mag - n_rand, k_max)
  raise ValueError(f'prune criterion {criterion!r}: expected one of {PRUNE[1:]}')


def grow_layer(criterion: str, candidates, hebbian, gradient, key, n, k_max=None) -> jax.Array:
  """Which absent edges to add: n of the candidates, by the criterion."""
  if criterion == 'random':
    score = jax.random.uniform(key, candidates.shape)
  elif criterion == 'hebbian':
    score = hebbian
  elif criterion == 'gradient':
    score = jnp.abs(gradient)
  else:
    raise ValueError(f'grow criterion {criterion!r}: expected one of {GROW[1:]}')
  return select_top(score, candidates, n, k_max)


def rewire_layer(spec: RewireSpec, mask, kernel, n, key, hebbian=None, gradient=None, same_group=None, k_max=None):
  """(pruned, grown) bool masks of one layer; both hold n edges (exactly constant density).

  k_max, a static bound on n, only makes the selection faster.
  """
  k_prune, k_grow, k_grow2 = jax.random.split(key, 3)
  pruned = prune_layer(spec.prune, mask, kernel, hebbian, k_prune, n, k_max)
  absent = ~(mask & ~pruned)
  if spec.candidates == 'same_kind':
    n_intra = jnp.sum(pruned & same_group)
    grown = grow_layer(spec.grow, absent & same_group, hebbian, gradient, k_grow, n_intra, k_max)
    grown |= grow_layer(spec.grow, absent & ~same_group, hebbian, gradient, k_grow2, n - n_intra, k_max)
  else:
    grown = grow_layer(spec.grow, absent, hebbian, gradient, k_grow, n, k_max)
  return pruned, grown


# ---------------------------------------------------------------------------------
# The update.


def sparse_paths(masks) -> list[tuple[str, ...]]:
  """Paths of the masked kernels, in natural order (hidden_0, hidden_1, ...)."""
  flat = traverse_util.flatten_dict(masks)
  return sorted((p for p, m in flat.items() if m is not None), key=conn.natural_key)


def count_active(masks) -> tuple[int, ...]:
  """Active edges of each sparse layer, in natural order."""
  flat = traverse_util.flatten_dict(masks)
  return tuple(int(jnp.sum(flat[p])) for p in sparse_paths(masks))


def layer_activity(apply_fn, variables, x, kernel_paths) -> dict:
  """{kernel path: (pre [N, I], post [N, O])} for the layers that own those kernels, from one
  forward pass intercepted with nn.intercept_methods: a layer's input, and the ReLU of its
  output (the firing of a ReLU layer's neurons), flattened over every axis but the last.

  The model needs no change: any Linen layer called with its input first works (nn.Dense,
  tiles.TiledDense, also feature-major).
  """
  wanted = {p[:-1] for p in kernel_paths}
  seen = {}

  def interceptor(next_fun, args, kwargs, context):
    out = next_fun(*args, **kwargs)
    module = context.module
    if context.method_name == '__call__' and tuple(module.path) in wanted:
      x, y = (args[0].T, out.T) if getattr(module, 'feature_major', False) else (args[0], out)
      seen[tuple(module.path)] = (x.reshape(-1, x.shape[-1]), nn.relu(y.reshape(-1, y.shape[-1])))
    return out

  with nn.intercept_methods(interceptor):
    apply_fn(variables, x)
  return {p: seen[p[:-1]] for p in kernel_paths}


def _layer_signals(params, batches, spec: RewireSpec, paths, activity_fn, loss_fn):
  """Hebbian scores and dense-gradient magnitudes per sparse layer, averaged over batches."""
  need_hebbian = spec.prune in ('hebbian', 'mixed') or spec.grow == 'hebbian'
  need_gradient = spec.grow == 'gradient'

  def one_batch(b):
    hebbian, gradients = [None] * len(paths), [None] * len(paths)
    if need_hebbian:
      activity = activity_fn(params, b)
      hebbian = [hebbian_scores(*activity[p]) for p in paths]
    if need_gradient:
      flat_g = traverse_util.flatten_dict(jax.grad(loss_fn)(params, b))
      gradients = [flat_g[p] for p in paths]
    return hebbian, gradients

  signals = jax.lax.map(one_batch, batches)  # leading axis: the batches
  return jax.tree.map(lambda x: jnp.mean(x, axis=0), signals)


def rewire(params, opt_state, sparsity, batches, rng, *, spec, tx, step, apply_fn, inputs, loss_fn=None):
  """Prunes and regrows every sparse layer of any Linen model once. Pure; jit it with the
  keyword arguments bound.

  Args:
    params, opt_state: the model's params and its optax state (tx's).
    sparsity: a sparse.Sparsity (masks, last grown edges, groups, tiled layout, active edges).
    batches: the latest k training batches, stacked on a leading axis, for the scores.
    rng: key for the random criteria.
    spec: the RewireSpec; step: the optimizer step (for a decaying fraction).
    apply_fn: the model's apply (variables, x) -> output; inputs(batch) -> its x.
    loss_fn(params, batch) -> the loss, for gradient growth (RigL).

  Returns:
    (params, opt_state, sparsity, info): pruned weights and grown ones are 0; with
    spec.reset_optimizer_state the moments of both are 0. info maps each layer name to the
    edges the mask lost (pruned) and gained (grown), those pruned and grown back in place
    (regrown: reset to 0), intra- and inter-group edge counts after the update, the mean |w|
    of the pruned edges and the turnover (share of the previous update's grown edges pruned
    now; -1 before any).
  """
  paths = sparse_paths(sparsity.masks)

  def activity(p, b):
    return layer_activity(apply_fn, sparsity.variables(p), inputs(b), paths)

  params, sparsity, changed, info = rewire_masks(
    params, sparsity, batches, rng, spec=spec, step=step, activity_fn=activity, loss_fn=loss_fn
  )
  if spec.reset_optimizer_state:
    changed_tree = traverse_util.unflatten_dict({p: changed.get(p) for p in traverse_util.flatten_dict(sparsity.masks)})
    opt_state = zero_moments(tx, opt_state, changed_tree)
  return params, opt_state, sparsity, info


def zero_moments(tx: optax.GradientTransformation, opt_state, changed_tree):
  """tx's state with the entries of changed weights set to 0 in every params-shaped part (Adam's
  mu and nu, say). changed_tree has the params' structure: a bool array where a kernel's edges
  changed, None elsewhere."""
  return optax.tree_map_params(
    tx, lambda v, c: v if c is None else jnp.where(c, jnp.zeros_like(v), v), opt_state, changed_tree
  )


def rewire_masks(params, sparsity, batches, rng, *, spec, step, activity_fn, loss_fn=None):
  """The model-independent core of a rewiring: (params, sparsity, changed, info), changed the
  {kernel path: entries pruned or grown} whose optimizer moments a face resets.

  activity_fn(params, batch) -> {kernel path: (pre [N, I], post [N, O])}, the Hebbian rule's
  layer activity; loss_fn(params, batch) -> the loss, for gradient growth.
  """
  paths = sparse_paths(sparsity.masks)
  names = conn.layer_names(paths)
  flat_shapes = traverse_util.flatten_dict(sparsity.masks)
  for path, active in zip(paths, sparsity.active_edges, strict=True):
    if active >= flat_shapes[path].size:
      raise ValueError(
        f'{"/".join(map(str, path))}: all {active} edges are present, so none can grow; a tiled layer needs '
        'tile_density < 1 or p_intra < 1, a scattered one a density below 1'
      )
  if spec.candidates == 'same_kind' and sparsity.groups is None and not sparsity.layout:
    raise ValueError("RewireSpec.candidates = 'same_kind' needs groups: a 'g2g' ConnectivitySpec's layers")

  hebbian, gradients = _layer_signals(params, batches, spec, paths, activity_fn, loss_fn)
  fraction = spec.fraction_at(step)
  flat_w = traverse_util.flatten_dict(params)
  flat_m = traverse_util.flatten_dict(sparsity.masks)
  flat_g = traverse_util.flatten_dict(sparsity.last_grown)
  new_w, new_m, new_g, changed, info = dict(flat_w), dict(flat_m), dict(flat_g), {}, {}
  for k, (path, name) in enumerate(zip(paths, names, strict=True)):
    mask, kernel, last_grown = flat_m[path], flat_w[path], flat_g[path]
    heb = hebbian[k]
    layout = conn.layer_layout(sparsity.layout, path)
    if layout is not None:  # a tiled layer: scores and groups at its present tiles
      heb = None if heb is None else tiles.to_blocks(heb, layout, *conn.tile_sizes(kernel))
      same_group = jnp.broadcast_to(layout['intra'][:, None, :, None], mask.shape)  # kernel [C, O, K, I]
    elif sparsity.groups is not None:
      groups = sparsity.groups[name]
      same_group = groups['in'][:, None] == groups['out'][None, :]
    else:
      same_group = None
    n = jnp.round(fraction * jnp.sum(mask)).astype(jnp.int32)
    # A static bound on n (active edges are constant): top_k of it, not a full sort.
    k_max = int(round(spec.fraction * sparsity.active_edges[k])) + 1
    key = jax.random.fold_in(rng, k)
    pruned, grown = rewire_layer(spec, mask, kernel, n, key, heb, gradients[k], same_group, k_max)
    mask_after = (mask & ~pruned) | grown
    new_m[path] = mask_after
    new_w[path] = jnp.where(mask_after & ~grown, kernel, 0.0)
    new_g[path] = grown
    changed[path] = pruned | grown
    n_pruned, n_last = jnp.sum(pruned), jnp.sum(last_grown)
    layer_info = {
      'pruned': jnp.sum(mask & ~mask_after),  # edges the mask lost
      'grown': jnp.sum(mask_after & ~mask),  # edges it gained
      'regrown': jnp.sum(pruned & grown),  # pruned and grown back in place: weight and moments reset
      'active': jnp.sum(mask_after),
      'pruned_mean_abs_weight': jnp.sum(jnp.abs(kernel) * pruned) / jnp.maximum(n_pruned, 1),
      'turnover': jnp.where(n_last > 0, jnp.sum(last_grown & pruned) / jnp.maximum(n_last, 1), -1.0),
    }
    if same_group is not None:
      layer_info['intra'] = jnp.sum(mask_after & same_group)
      layer_info['inter'] = jnp.sum(mask_after & ~same_group)
    info[name] = layer_info

  sparsity = sparsity.replace(masks=traverse_util.unflatten_dict(new_m), last_grown=traverse_util.unflatten_dict(new_g))
  return traverse_util.unflatten_dict(new_w), sparsity, changed, info
