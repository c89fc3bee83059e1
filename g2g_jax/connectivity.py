"""Group assignments, connectivity masks and parameter / FLOP / sparsity accounting.

Everything here is host-side numpy, seeded, and cheap: masks are drawn once when a
train state is built. A mask is a bool array `M_IxO` with `M[i, o]` True where input
neuron `i` feeds output neuron `o` (the layout of a Flax `Dense` kernel). Which kernels
are sparse is a pattern over parameter paths (`ConnectivitySpec.sparse_kernels`), so the
same masks serve any Flax model; sparse layers are numbered in the natural order of
their paths (hidden_2 before hidden_10).
"""

import dataclasses
import fnmatch
import re
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from flax import traverse_util

from g2g_jax.state import STREAMS

KINDS = ('dense', 'er', 'g2g')
GROUPINGS = ('index', 'random', 'mixer')


@dataclasses.dataclass(frozen=True)
class ConnectivitySpec:
  """How the hidden layers of the MLP head are connected (see PAPER.md)."""

  kind: str = 'g2g'  # 'dense' | 'er' (unstructured, G2G's density) | 'g2g'
  grouping: str = 'mixer'  # 'index' | 'random' | 'mixer'
  num_groups: int = 8  # G, groups per side of each sparse layer
  p_intra: float = 1.0  # p, edge probability inside a group
  p_inter: float = 0.15  # p', edge probability between groups
  inter: str = 'bernoulli'  # inter-group edges: 'bernoulli' (the paper's) | 'tiles' (see tiles.py)
  tile_size: int = 0  # neurons per tile side, inter = 'tiles' only; 0 = a whole group
  tile_density: float = 1.0  # share of edges present inside an inter tile, inter = 'tiles' only
  # '/'-joined parameter paths of the sparse kernels, an fnmatch pattern ('*' spans '/'):
  # G2GNet's are 'head/hidden_*/kernel'.
  sparse_kernels: str = 'head/hidden_*/kernel'

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
  layers, 0 for a dense model. A tiled kernel (tiles.py) is measured against the dense
  layer it stands for, whose size its layout gives.
  """
  flat_p = traverse_util.flatten_dict(params)
  flat_m = traverse_util.flatten_dict(masks)
  flat_l = traverse_util.flatten_dict(layout) if layout else {}
  layers, head_active, total_active, total_size = [], 0, 0, 0
  flops_sparse, flops_dense = 0, 0
  for path, p in flat_p.items():
    m = flat_m.get(path)
    size = int(np.size(p))
    if np.ndim(p) == 4 and (*path[:-1], 'in_order') in flat_l:
      size = flat_l[(*path[:-1], 'in_order')].shape[0] * flat_l[(*path[:-1], 'out_order')].shape[0]
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
