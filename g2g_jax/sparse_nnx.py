"""G2G for Flax NNX models: g2g_jax.sparse's masks, rewiring and tiles, over an nnx.Module.

  model = MyModel(rngs=nnx.Rngs(0))
  sparse_nnx.sparsify(model, ConnectivitySpec(sparse_kernels='blocks/*/mlp/kernel'), seed=0)
  optimizer = nnx.Optimizer(model, optax.adam(1e-3), wrt=nnx.Param)  # masks are no Params
  grads = sparse_nnx.masked(grads, model)                 # in your train step, before update
  optimizer.update(model, grads); sparse_nnx.zero_pruned(model)
  info = sparse_nnx.rewire(model, optimizer, batches, key, spec=RewireSpec(...), step=s)

A thin face over the pure functions the Linen face and the training loop use
(connectivity.draw, rewiring.rewire_masks, tiles.tiled_apply). The connectivity lives in
the model, beside each sparse kernel: `kernel_mask` (Mask), `kernel_grown` (Grown: the
latest rewiring's grown edges), `groups_in` / `groups_out` (Groups) of grouped layers, and a
TiledLinear's layout arrays (TileLayout). None of them is an nnx.Param, so an
nnx.Optimizer(..., wrt=nnx.Param) never updates them; nnx.state(model) and orbax save them
with the model, and nnx.split / nnx.merge carry them through jax.jit, nnx.jit, vmap and scan.
To restore a checkpoint, build the model, sparsify it (with any seed), then nnx.update it
with the restored state. Layer activity for the Hebbian rule is read by wrapping the sparse
layers' __call__ for one forward pass (nnx.capture's own means): the model needs no change.
"""

import contextlib
import dataclasses
import fnmatch

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx, traverse_util

from g2g_jax import connectivity as conn
from g2g_jax import rewiring, sparse, tiles
from g2g_jax.connectivity import ConnectivitySpec, TilePlan, plan_layer
from g2g_jax.rewiring import RewireSpec
from g2g_jax.state import Sparsity

__all__ = [
  'ConnectivitySpec',
  'Grown',
  'Groups',
  'Mask',
  'RewireSpec',
  'TileLayout',
  'TiledLinear',
  'masked',
  'plan_layer',
  'rewire',
  'sparsify',
  'sparsity_of',
  'zero_pruned',
]


class Mask(nnx.Variable):
  """A sparse kernel's connectivity: True where an edge is present."""


class Grown(nnx.Variable):
  """The edges of a sparse kernel that the latest rewiring grew (for the next one's turnover)."""


class Groups(nnx.Variable):
  """The group of every neuron on one side of a sparse layer."""


class TileLayout(nnx.Variable):
  """One of a tiled layer's layout arrays (connectivity.make_layout draws them)."""


class TiledLinear(nnx.Module):
  """A sparse nnx.Linear that computes only its present tiles: a drop-in for nnx.Linear.

  Params kernel [C, tile_out, K, tile_in] and bias [out_features]; its layout arrays are
  TileLayout variables that sparsify fills. `plan` comes from plan_layer(in, out, k, spec),
  k the layer's place among the model's sparse kernels in natural order.
  """

  def __init__(
    self,
    in_features: int,
    out_features: int,
    plan: TilePlan,
    *,
    rngs: nnx.Rngs,
    kernel_init=nnx.initializers.lecun_normal(in_axis=1, out_axis=(0, 2)),
  ):
    self.plan = plan
    c, o, k, i = tiles.kernel_shape(in_features, out_features, plan)
    drawn = kernel_init(rngs.params(), (c, k * i, o))  # fan-in K x tile_in, as tiles.TiledDense
    self.kernel = nnx.Param(conn.from_ckio(drawn.reshape(c, k, i, o)))
    self.bias = nnx.Param(jnp.zeros((out_features,)))
    for name, (shape, dtype) in tiles.layout_shapes(in_features, out_features, plan).items():
      setattr(self, name, TileLayout(jnp.zeros(shape, dtype)))

  def layout(self) -> dict:
    return {name: getattr(self, name).get_value() for name in tiles.LAYOUT_NAMES}

  def __call__(self, x: jax.Array) -> jax.Array:
    return tiles.tiled_apply(x, self.kernel.get_value(), self.bias.get_value(), self.layout(), self.plan)


def _modules(model) -> dict:
  return dict(nnx.iter_modules(model))


def _name(path) -> tuple[str, ...]:
  return tuple(str(k) for k in path)


def sparsify(model, spec: ConnectivitySpec, seed: int, *, where=None) -> list[str]:
  """Draws the masks (and groups, and a TiledLinear's layout) of the model's sparse kernels,
  zeroes their pruned weights and rescales the others to each output's active fan-in, in
  place. The kernels are the Params whose '/'-joined path matches spec.sparse_kernels, or
  those the NNX filter `where` selects (nnx.All(nnx.Param, nnx.PathContains('mlp')), say).
  Returns their paths in natural order, the order that numbers the layers."""
  flat = dict(nnx.state(model, nnx.Param).flat_state())
  if where is None:
    if not spec.sparse_kernels:
      sparse.check({}, spec)  # the one message for an empty pattern
    chosen = [p for p in flat if fnmatch.fnmatchcase('/'.join(_name(p)), spec.sparse_kernels)]
    rule = f'ConnectivitySpec.sparse_kernels = {spec.sparse_kernels!r}'
  else:
    predicate = nnx.filterlib.to_predicate(where)
    chosen = [p for p, v in flat.items() if predicate(p, v)]
    rule = f'the filter {where!r}'
  if not chosen:
    kernels = sorted('/'.join(_name(p)) for p, v in flat.items() if np.ndim(v.get_value()) >= 2)[:6]
    raise ValueError(f'{rule} matches no Param of the model; kernels: {kernels}')
  modules = _modules(model)
  params = traverse_util.unflatten_dict({_name(p): flat[p].get_value() for p in chosen})
  tiled = {p: modules[p[:-1]] for p in chosen if isinstance(modules[p[:-1]], TiledLinear)}
  for p in chosen:
    if (p in tiled) != (spec.inter == 'tiles'):
      kind = type(modules[p[:-1]]).__name__
      raise ValueError(
        f'{"/".join(_name(p))}: a {kind} with ConnectivitySpec.inter = {spec.inter!r}; '
        "tiles need TiledLinear layers, and TiledLinear layers inter = 'tiles'"
      )
  layout = {_name(p[:-1]) + (k,): v for p, m in tiled.items() for k, v in m.layout().items()}
  layout = traverse_util.unflatten_dict(layout) if layout else None
  chosen_spec = dataclasses.replace(spec, sparse_kernels='*')  # the chosen kernels are all the params here
  sparse.check(params, chosen_spec, layout)
  params, masks, groups, layout = conn.draw(params, chosen_spec, seed, layout)
  flat_p, flat_m = traverse_util.flatten_dict(params), traverse_util.flatten_dict(masks)
  flat_l = traverse_util.flatten_dict(layout) if layout else {}
  paths = rewiring.sparse_paths(masks)
  names = conn.layer_names(paths)
  by_name = {_name(p): p for p in chosen}
  for path, name in zip(paths, names, strict=True):
    original = by_name[path]
    module, param = modules[original[:-1]], original[-1]
    flat[original].set_value(jnp.asarray(flat_p[path]))
    mask = jnp.asarray(flat_m[path])
    setattr(module, f'{param}_mask', Mask(mask))
    setattr(module, f'{param}_grown', Grown(jnp.zeros_like(mask)))
    setattr(module, f'{param}_active_edges', int(mask.sum()))  # static: the rewiring's bound on n
    if groups is not None:
      module.groups_in, module.groups_out = (
        Groups(jnp.asarray(groups[name]['in'])),
        Groups(jnp.asarray(groups[name]['out'])),
      )
    if original in tiled:
      for key in tiles.LAYOUT_NAMES:
        getattr(module, key).set_value(jnp.asarray(flat_l[(*path[:-1], key)]))
  return ['/'.join(p) for p in paths]


def _sparse_kernels(model) -> dict:
  """{original param path: owning module} of the kernels sparsify made sparse."""
  out = {}
  for path, module in nnx.iter_modules(model):
    for key, value in vars(module).items():
      if isinstance(value, Mask) and key.endswith('_mask'):
        out[(*path, key[: -len('_mask')])] = module
  return out


def sparsity_of(model) -> Sparsity:
  """The model's connectivity as the pure functions read it: a Sparsity over string-keyed
  trees shaped like nnx.state(model, nnx.Param).to_pure_dict()."""
  kernels = _sparse_kernels(model)
  flat_params = dict(nnx.state(model, nnx.Param).flat_state())
  masks = {_name(p): None for p in flat_params}
  grown = dict(masks)
  layout = {}
  for path, module in kernels.items():
    masks[_name(path)] = getattr(module, f'{path[-1]}_mask').get_value()
    grown[_name(path)] = getattr(module, f'{path[-1]}_grown').get_value()
    if isinstance(module, TiledLinear):
      layout.update({_name(path[:-1]) + (k,): v for k, v in module.layout().items()})
  masks, grown = traverse_util.unflatten_dict(masks), traverse_util.unflatten_dict(grown)
  paths = rewiring.sparse_paths(masks)
  by_name = {_name(p): m for p, m in kernels.items()}
  originals = {_name(p): p for p in kernels}
  groups = None
  if all(hasattr(by_name[p], 'groups_in') for p in paths):
    groups = {
      name: {'in': by_name[p].groups_in.get_value(), 'out': by_name[p].groups_out.get_value()}
      for p, name in zip(paths, conn.layer_names(paths), strict=True)
    }
  active = tuple(getattr(by_name[p], f'{originals[p][-1]}_active_edges') for p in paths)
  return Sparsity(masks, grown, groups, traverse_util.unflatten_dict(layout) if layout else None, active)


def masked(grads: nnx.State, model) -> nnx.State:
  """The gradients (an nnx.State of Params) with every pruned entry 0: pass them to the optimizer."""
  masks = {p: getattr(m, f'{p[-1]}_mask').get_value() for p, m in _sparse_kernels(model).items()}
  return nnx.map_state(
    lambda path, v: v.replace(jnp.where(masks[path], v.get_value(), 0)) if path in masks else v, grads
  )


def zero_pruned(model):
  """Sets every pruned weight of the model to exactly 0, in place (after an optimizer update)."""
  for path, module in _sparse_kernels(model).items():
    kernel = getattr(module, path[-1])
    kernel.set_value(jnp.where(getattr(module, f'{path[-1]}_mask').get_value(), kernel.get_value(), 0))


@contextlib.contextmanager
def _recording(model, kernel_paths):
  """Records (input, output) of the modules owning these kernels for the forward passes run
  inside: their classes' __call__ wrapped for the moment (as nnx.capture does)."""
  modules = _modules(model)
  wanted = {id(modules[p[:-1]]): p for p in kernel_paths}
  seen = {}
  originals = {}
  for cls in {type(modules[p[:-1]]) for p in kernel_paths}:
    originals[cls] = cls.__call__

    def call(self, x, *args, _call=cls.__call__, **kwargs):
      y = _call(self, x, *args, **kwargs)
      if id(self) in wanted:
        seen[wanted[id(self)]] = (x, y)
      return y

    cls.__call__ = call
  try:
    yield seen
  finally:
    for cls, original in originals.items():
      cls.__call__ = original


def rewire(model, optimizer, batches, rng, *, spec: RewireSpec, step, forward=None, loss_fn=None) -> dict:
  """Prunes and regrows every sparse kernel of the model once, in place: rewiring.rewire_masks
  over the model's Params and connectivity. With spec.reset_optimizer_state, the optimizer's
  moments of the changed entries are set to 0 (any optax optimizer in an nnx.Optimizer).

  batches: the latest k training batches stacked on a leading axis; forward(model, batch)
  runs the model on one (default: model(batch)); loss_fn(model, batch) -> the loss, for
  gradient growth. Returns rewiring's info per layer (pruned, grown, regrown, intra, inter...).
  """
  forward = forward or (lambda m, b: m(b))
  graphdef, state = nnx.split(model)
  flat_params = dict(nnx.state(model, nnx.Param).flat_state())
  originals = {_name(p): p for p in flat_params}
  params = traverse_util.unflatten_dict({_name(p): v.get_value() for p, v in flat_params.items()})
  sparsity = sparsity_of(model)
  paths = rewiring.sparse_paths(sparsity.masks)

  def with_params(p):
    values = traverse_util.flatten_dict(p)
    return nnx.merge(
      graphdef,
      nnx.map_state(
        lambda path, v: v.replace(values[_name(path)]) if _name(path) in values and isinstance(v, nnx.Param) else v,
        state,
      ),
    )

  def activity(p, batch):
    m = with_params(p)
    with _recording(m, [originals[path] for path in paths]) as seen:
      forward(m, batch)
    out = {}
    for path in paths:
      x, y = seen[originals[path]]
      out[path] = (x.reshape(-1, x.shape[-1]), jax.nn.relu(y.reshape(-1, y.shape[-1])))
    return out

  def loss(p, batch):
    return loss_fn(with_params(p), batch)

  params, sparsity, changed, info = rewiring.rewire_masks(
    params, sparsity, batches, rng, spec=spec, step=step, activity_fn=activity, loss_fn=loss if loss_fn else None
  )
  flat_new, flat_masks = traverse_util.flatten_dict(params), traverse_util.flatten_dict(sparsity.masks)
  flat_grown = traverse_util.flatten_dict(sparsity.last_grown)
  kernels = _sparse_kernels(model)
  for path in paths:
    original = originals[path]
    module = kernels[original]
    flat_params[original].set_value(flat_new[path])
    getattr(module, f'{original[-1]}_mask').set_value(flat_masks[path])
    getattr(module, f'{original[-1]}_grown').set_value(flat_grown[path])
  if spec.reset_optimizer_state and optimizer is not None:
    _reset_moments(model, optimizer, {originals[p]: c for p, c in changed.items()})
  return info


def _reset_moments(model, optimizer, changed: dict):
  """Zeroes the optimizer's moments of changed weights: rewiring.zero_moments over the model's
  Params (the nnx.Optimizer's wrt=nnx.Param), by the optimizer's own structure."""
  params = nnx.as_pure(nnx.state(model, nnx.Param))
  changed_tree = nnx.State.from_flat_path({path: changed.get(path) for path, _ in params.flat_state()})
  state = rewiring.zero_moments(optimizer.tx, nnx.as_pure(optimizer.opt_state), changed_tree)
  nnx.update(optimizer.opt_state, nnx.state(state))
