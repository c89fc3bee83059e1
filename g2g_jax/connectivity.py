"""Drawing a model's sparse connectivity, and accounting for it: groups, masks and tile layouts.

Everything here is host-side numpy, seeded, and cheap: masks are drawn once when a train
state is built. A mask is a bool array `M_IxO` with `M[i, o]` True where input neuron `i`
feeds output neuron `o` (the layout of a Flax `Dense` kernel). Which kernels are sparse is a
pattern over parameter paths (`ConnectivitySpec.sparse_kernels`), so the same masks serve
any Flax model; sparse layers are numbered in the natural order of their paths (hidden_2
before hidden_10).

With `inter = 'tiles'` a sparse layer is a tiles.TiledDense, stored and computed as tiles,
and this module draws its layout: neurons are ordered by group on each side and cut into
tiles (tile_in neurons on the input side, tile_out on the output side; `tile_size = 0`
makes a group one tile). Each output tile reads the same number K of input tiles: all the
tiles of its own group (intra, edges Bernoulli(p) inside them) and K_inter tiles of other
groups (inter, edges Bernoulli(tile_density) inside), K_inter = round(p' x (G - 1) x tiles
per input group / tile_density), so the expected density matches the Bernoulli layer up to
that rounding. Inter tiles are K_inter distinct (group offset d, shift s) pairs: output tile
w of group g reads input tile sigma_d((w + s) mod S_in) of group g + d, sigma_d a random
permutation per offset, so every input tile feeds the same number of output tiles. With
tile_density = 1 and p = 1 the present tiles are full and leave DST nothing to grow into.
"""

import dataclasses
import fnmatch
import re
from collections.abc import Mapping, Sequence
from typing import Any

import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from g2g_jax.fields import Choice, Float, Int, Text, check, field
from g2g_jax.state import STREAMS

KINDS = ('dense', 'er', 'g2g')
INTERS = ('bernoulli', 'tiles')  # inter-group edges: scattered (the paper's) or whole tiles
GROUPINGS = ('index', 'random', 'mixer')


@dataclasses.dataclass(frozen=True)
class ConnectivitySpec:
  """How a model's sparse layers are connected (config.connectivity; see PAPER.md)."""

  kind: str = field('g2g', Choice(KINDS), "'g2g' | 'er' (unstructured, G2G's density) | 'dense'")
  grouping: str = field('mixer', Choice(GROUPINGS), "'mixer' | 'index' | 'random' (g2g only)")
  num_groups: int = field(8, Int(1), 'G: groups per side of each sparse layer')
  p_intra: float = field(1.0, Float(0.0, 1.0), 'p: edge probability inside a group, in [0, 1]')
  p_inter: float = field(0.15, Float(0.0, 1.0), "p': edge probability between groups, in [0, 1]")
  inter: str = field('bernoulli', Choice(INTERS), "inter-group edges: 'bernoulli' (scattered, the paper's) | 'tiles'")
  tile_size: int = field(0, Int(0), "neurons per tile side, inter = 'tiles'; 0 = a group per tile")
  tile_density: float = field(
    1.0, Float(0.0, 1.0, lo_open=True), 'edges present inside an inter tile, (0, 1]; < 1 leaves DST room to grow'
  )
  sparse_kernels: str = field(
    '',
    Text(),
    "the sparse kernels: an fnmatch pattern over '/'-joined param paths ('*' spans '/'); in a run's config '' "
    "means the model's own (G2GNet's 'head/hidden_*/kernel', the Mixer's 'block_*/*_mlp/Dense_*/kernel')",
  )

  def __post_init__(self):
    check(self)

  @property
  def density(self) -> float:
    """Expected share of present edges in a sparse layer."""
    if self.kind == 'dense':
      return 1.0
    return expected_density(self.num_groups, self.p_intra, self.p_inter)


def expected_density(num_groups: int, p_intra: float, p_inter: float) -> float:
  """p/G + p'(G-1)/G: one output's group holds 1/G of the inputs."""
  return p_intra / num_groups + p_inter * (num_groups - 1) / num_groups


def contiguous_groups(n: int, num_groups: int) -> np.ndarray:
  """g(i) = i // (n / G): blocks of consecutive neurons."""
  return np.arange(n) // (n // num_groups)


def interleaved_groups(n: int, num_groups: int) -> np.ndarray:
  """g(i) = i mod G: every G-th neuron shares a group."""
  return np.arange(n) % num_groups


def layer_groups(n_in: int, n_out: int, layer: int, spec: ConnectivitySpec, seed: int) -> tuple[np.ndarray, np.ndarray]:
  """Group labels (g_in, g_out) of one sparse layer, deterministic in the seed.

  index: contiguous on both sides of every layer, so pathways stay aligned.
  random: a balanced random permutation of the contiguous labels, drawn
    independently for each side of each layer.
  mixer: contiguous on even layers, interleaved on odd ones (both sides), so the
    neurons one layer groups together are spread over all groups by the next.
  """
  g = spec.num_groups
  if spec.grouping == 'index':
    return contiguous_groups(n_in, g), contiguous_groups(n_out, g)
  if spec.grouping == 'random':
    rng = np.random.default_rng([seed, STREAMS['groups'], layer])
    return rng.permutation(contiguous_groups(n_in, g)), rng.permutation(contiguous_groups(n_out, g))
  if spec.grouping == 'mixer':
    labels = contiguous_groups if layer % 2 == 0 else interleaved_groups
    return labels(n_in, g), labels(n_out, g)
  raise ValueError(f'grouping {spec.grouping!r}: expected one of {GROUPINGS}')


def edge_probabilities(g_in: np.ndarray, g_out: np.ndarray, spec: ConnectivitySpec):
  """P_IxO: p where input and output share a group, p' elsewhere."""
  same = g_in[:, None] == g_out[None, :]
  return np.where(same, spec.p_intra, spec.p_inter)


def make_layer_mask(n_in: int, n_out: int, layer: int, spec: ConnectivitySpec, seed: int) -> np.ndarray | None:
  """Bool mask M_IxO of one hidden layer, or None for a dense layer."""
  if spec.kind == 'dense':
    return None
  rng = np.random.default_rng([seed, STREAMS['edges'], layer])
  if spec.kind == 'er':
    probs = np.full((n_in, n_out), spec.density)
  elif spec.kind == 'g2g':
    probs = edge_probabilities(*layer_groups(n_in, n_out, layer, spec, seed), spec)
  else:
    raise ValueError(f'kind {spec.kind!r}: expected one of {KINDS}')
  return rng.random((n_in, n_out)) < probs


def natural_key(path: tuple[str, ...]) -> tuple:
  """Sorts paths with the numbers in their names compared as numbers (hidden_2 < hidden_10)."""
  return tuple(tuple(int(t) if t.isdigit() else t for t in re.split(r'(\d+)', part)) for part in path)


def sparse_layer_paths(params: Mapping[str, Any], pattern: str) -> list[tuple[str, ...]]:
  """Flattened paths of the kernels whose '/'-joined path matches the pattern, in natural order."""
  flat = traverse_util.flatten_dict(params)
  return sorted((p for p in flat if fnmatch.fnmatchcase('/'.join(p), pattern)), key=natural_key)


def layer_names(paths: Sequence[tuple[str, ...]]) -> list[str]:
  """A short name per sparse kernel: its module path, less what every one of them shares
  (G2GNet's 'head/hidden_0/kernel' is 'hidden_0')."""
  modules = [p[:-1] for p in paths]
  common = 0
  while modules and all(len(m) > common + 1 and m[common] == modules[0][common] for m in modules):
    common += 1
  return ['/'.join(m[common:]) for m in modules]


def make_masks(params: Mapping[str, Any], spec: ConnectivitySpec, seed: int):
  """A tree shaped like `params`: bool masks for the sparse kernels, None elsewhere."""
  flat = traverse_util.flatten_dict(params)
  masks = {path: None for path in flat}
  for layer, path in enumerate(sparse_layer_paths(params, spec.sparse_kernels)):
    n_in, n_out = flat[path].shape
    masks[path] = make_layer_mask(n_in, n_out, layer, spec, seed)
  return traverse_util.unflatten_dict(masks)


def make_groups(params: Mapping[str, Any], spec: ConnectivitySpec, seed: int) -> dict | None:
  """{layer name: {'in': g_in, 'out': g_out}}: each sparse layer's labels under the grouping.

  None when some width does not split into the spec's groups (a dense or ER model of
  arbitrary width), or for tiled layers, which carry their groups in their layout.
  """
  flat = traverse_util.flatten_dict(params)
  paths = sparse_layer_paths(params, spec.sparse_kernels)
  shapes = [flat[p].shape for p in paths]
  if not paths or any(len(s) != 2 or s[0] % spec.num_groups or s[1] % spec.num_groups for s in shapes):
    return None
  groups = {}
  for k, (name, (n_in, n_out)) in enumerate(zip(layer_names(paths), shapes, strict=True)):
    g_in, g_out = layer_groups(n_in, n_out, k, spec, seed)
    groups[name] = {'in': g_in.astype(np.int32), 'out': g_out.astype(np.int32)}
  return groups


def rescale_init(kernel: np.ndarray, mask: np.ndarray) -> np.ndarray:
  """Masks a dense-initialised kernel and rescales each output's active weights.

  Output o keeps fan_in(o) of n_in inputs; multiplying its weights by
  sqrt(n_in / fan_in(o)) restores the variance of its pre-activation to that of a
  dense layer. An output with no inputs is left at zero.
  """
  n_in = kernel.shape[0]
  fan_in = mask.sum(axis=0)
  scale = np.sqrt(n_in / np.maximum(fan_in, 1))
  return np.where(mask, kernel * scale[None, :], 0).astype(kernel.dtype)


def mlp_param_count(n_features: int, widths: Sequence[int], num_classes: int, density: float = 1.0):
  """Weights and biases of the MLP head, the hidden kernels counted at `density`."""
  sizes = [n_features, *widths]
  hidden = sum(a * b for a, b in zip(sizes[:-1], sizes[1:], strict=True))
  return density * hidden + sum(widths) + sizes[-1] * num_classes + num_classes


def param_matched_width(n_features: int, num_hidden: int, num_classes: int, target_params: float) -> int:
  """The hidden width whose dense MLP head has the parameter count nearest the target.

  Used for the FC v1 baseline: a dense network as large as G2GNet's active part.
  """
  widths = np.arange(1, 1 << 16)
  counts = np.array([mlp_param_count(n_features, [w] * num_hidden, num_classes) for w in widths])
  return int(widths[np.argmin(np.abs(counts - target_params))])


@dataclasses.dataclass(frozen=True)
class LayerStats:
  name: str
  dense_size: int  # n_in x n_out, the edges of the dense layer it stands for
  active: int

  @property
  def density(self) -> float:
    return self.active / self.dense_size


def accounting(params, masks, runs: Mapping[str, int], head: str, layout=None) -> dict:
  """Active parameters, densities and forward FLOPs per example.

  Parameters are counted for the model's head (params whose '/'-joined path matches the
  pattern `head`: G2GNet's MLP head, as the paper's table counts) and for the whole model;
  a masked kernel counts its present edges only. FLOPs are 2 x multiply-adds of the
  kernels (biases, norms and activations ignored); a kernel whose module path matches a
  pattern in `runs` runs that many times per example (a conv once per patch, a Mixer's
  token MLP once per channel), any other once. `sparsity` is over the sparse (masked)
  layers, 0 for a dense model. A tiled kernel is measured against the dense layer it
  stands for, whose size its layout gives.
  """
  flat_p = traverse_util.flatten_dict(params)
  flat_m = traverse_util.flatten_dict(masks)
  flat_l = traverse_util.flatten_dict(layout) if layout else {}
  layers, head_active, total_active, total_size = [], 0, 0, 0
  flops_sparse, flops_dense = 0, 0
  for path, p in flat_p.items():
    m = flat_m.get(path)
    size = int(np.size(p))
    tiled = layer_layout(flat_l, path)
    if tiled is not None:
      size = tiled['in_order'].shape[0] * tiled['out_order'].shape[0]
    active = int(np.asarray(m).sum()) if m is not None else size
    total_active += active
    total_size += size
    name = '/'.join(path)
    if fnmatch.fnmatchcase(name, head):
      head_active += active
    if path[-1] == 'kernel':
      times = next((n for pattern, n in runs.items() if fnmatch.fnmatchcase('/'.join(path[:-1]), pattern)), 1)
      flops_sparse += 2 * active * times
      flops_dense += 2 * size * times
      if m is not None:
        layers.append(LayerStats('/'.join(path[:-1]), size, active))
  sparse_total = sum(s.dense_size for s in layers)
  sparse_active = sum(s.active for s in layers)
  return {
    'head_params': head_active,
    'total_params': total_active,
    'total_params_dense': total_size,
    'layer_density': {s.name: s.density for s in layers},
    'density': sparse_active / sparse_total if layers else 1.0,
    'sparsity': 1.0 - sparse_active / sparse_total if layers else 0.0,
    'flops_per_example': flops_sparse,
    'flops_per_example_dense': flops_dense,
  }


# ---------------------------------------------------------------------------------
# Tiled inter-group connectivity: layouts (what a tiles.TiledDense reads) and block masks.


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


def plan_layer(n_in: int, n_out: int, layer: int, spec: ConnectivitySpec) -> TilePlan:
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


def make_layout(n_in: int, n_out: int, layer: int, spec: ConnectivitySpec, seed: int):
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

  g_in, g_out = layer_groups(n_in, n_out, layer, spec, seed)
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


def layer_layout(layout, kernel_path: tuple[str, ...]) -> dict | None:
  """The layout arrays of a tiled kernel ({name: array}), or None: the one test of "tiled".
  `layout` is the 'layout' collection, nested or flattened; a TiledDense's kernel is 'kernel'."""
  if kernel_path[-1] != 'kernel':
    return None
  flat = layout if not layout or isinstance(next(iter(layout)), tuple) else traverse_util.flatten_dict(layout)
  prefix = tuple(kernel_path[:-1])
  found = {path[-1]: value for path, value in (flat or {}).items() if path[:-1] == prefix}
  return found or None


def draw(params, spec: ConnectivitySpec, seed: int, layout=None):
  """(params, masks, groups, layout): the masks of the kernels spec.sparse_kernels matches
  (block masks for tiled ones, whose layout collection it fills), their groups, and the
  params with pruned weights zeroed and each output's others rescaled to its active fan-in
  (sqrt(n_in / fan_in))."""
  if layout is None:
    masks = make_masks(params, spec, seed)
  else:
    masks, layout = make_masks_and_layout(params, layout, spec, seed)
  flat_p, flat_m = traverse_util.flatten_dict(params), traverse_util.flatten_dict(masks)
  for path, m in flat_m.items():
    if m is not None:
      rescale = rescale_tiled_init if layer_layout(layout, path) is not None else rescale_init
      flat_p[path] = jnp.asarray(rescale(np.asarray(flat_p[path]), m))
  return traverse_util.unflatten_dict(flat_p), masks, make_groups(params, spec, seed), layout


def make_masks_and_layout(params, layout, spec: ConnectivitySpec, seed: int):
  """Block masks for the tiled kernels (None elsewhere) and the filled layout collection."""
  flat_p = traverse_util.flatten_dict(params)
  flat_l = traverse_util.flatten_dict(layout)
  masks = {path: None for path in flat_p}
  for k, path in enumerate(sparse_layer_paths(params, spec.sparse_kernels)):
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


def rescale_tiled_init(kernel_CxOxKxI: np.ndarray, mask_CxOxKxI: np.ndarray) -> np.ndarray:
  """rescale_init for a tiled kernel: each output's present weights scaled to its fan-in."""
  c, t_out, k, t_in = kernel_CxOxKxI.shape
  as_2d = lambda a: np.asarray(a).transpose(2, 3, 0, 1).reshape(k * t_in, c * t_out)  # noqa: E731
  scaled = rescale_init(as_2d(kernel_CxOxKxI), as_2d(mask_CxOxKxI))
  return scaled.reshape(k, t_in, c, t_out).transpose(2, 3, 0, 1)
