"""A lead for tiles, measured and not built: intra-group tiles as one block-diagonal matmul.

python experiments/bench/prototypes/tiles_blockdiag.py [WIDTH [TILE]]   (default 1024 32; TILE 0 = a group)

One tiled layer with TILE-wide tiles (index grouping, G = 8, p = 1, p' = 0.15), forward
and backward (gradients of kernel and input), three ways, timed in turns:
  dense     the dense layer of the same width;
  current   what TiledDense does: every output tile gathers its K input tiles (its own
            group's and the inter tiles), then one batched matmul;
  proposed  the own group's tiles as one block-diagonal matmul on the ungathered input
            (a [G, group, group] kernel), and only the inter tiles gathered.
With group-sized tiles (TILE 0, the default tile_size) K is 2; with 32-wide
tiles each input tile is gathered for 8 output tiles (width 1024), which is why they
run slower than dense. Building `proposed` into TiledDense needs the kernel stored as
two params (intra, inter), a new checkpoint layout and DST's edits on both.
"""

import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

from g2g_jax import connectivity as conn
from g2g_jax import tiles

N, B, G = int(sys.argv[1]) if len(sys.argv) > 1 else 1024, 256, 8
T = (int(sys.argv[2]) if len(sys.argv) > 2 else 32) or N // G
spec = conn.ConnectivitySpec(
  kind='g2g', grouping='index', num_groups=G, p_intra=1.0, p_inter=0.15, inter='tiles', tile_size=T, tile_density=1.0
)
layout, mask = conn.make_layout(N, N, 0, spec, 0)
plan = conn.plan_layer(N, N, 0, spec)
C, K, S = N // T, plan.num_slots, plan.num_intra
R = N // T
idx, rev = jnp.asarray(layout['idx']), jnp.asarray(layout['rev'])
idx_inter = layout['idx'][:, S:]
rev_inter = jnp.asarray(conn.reverse_index(idx_inter, R))
idx_inter = jnp.asarray(idx_inter)
print(f'N={N} tiles {T}: C={C} K={K} intra slots {S}, inter {K - S}')
rng = np.random.default_rng(0)
x = jnp.asarray(rng.standard_normal((N, B), np.float32))
gy = jnp.asarray(rng.standard_normal((N, B), np.float32))
w_dense = jnp.asarray(rng.standard_normal((N, N), np.float32) * 0.03)
w_tiles = jnp.asarray(rng.standard_normal((C, T, K, T), np.float32) * 0.03)
gs = N // G
w_intra = jnp.asarray(rng.standard_normal((G, gs, gs), np.float32) * 0.03)
w_inter = jnp.asarray(rng.standard_normal((C, T, K - S, T), np.float32) * 0.03)


def dense(w, x):
  return jnp.einsum('ij,ib->jb', w, x)


def current(w, x):
  return tiles.tile_matmul(w, tiles.gather_tiles(x.reshape(R, T, B), idx, rev)).reshape(N, B)


def proposed(wi, we, x):
  intra = jnp.einsum('gst,gtb->gsb', wi, x.reshape(G, gs, B)).reshape(N, B)
  inter = tiles.tile_matmul(we, tiles.gather_tiles(x.reshape(R, T, B), idx_inter, rev_inter)).reshape(N, B)
  return intra + inter


def vg(f, nargs):
  return jax.grad(lambda *a: jnp.sum(f(*a) * gy), argnums=tuple(range(nargs)))


grads = {'dense': vg(dense, 2), 'current': vg(current, 2), 'proposed': vg(proposed, 3)}
args = {'dense': (w_dense, x), 'current': (w_tiles, x), 'proposed': (w_intra, w_inter, x)}
fns = {k: jax.jit(f) for k, f in grads.items()}
for k, fn in fns.items():
  jax.block_until_ready(fn(*args[k]))
times = {k: [] for k in fns}
for _ in range(15):
  for k, fn in fns.items():
    t = time.perf_counter()
    for _ in range(10):
      out = fn(*args[k])
    jax.block_until_ready(out)
    times[k].append((time.perf_counter() - t) / 10)
med = {k: 1e3 * np.median(v) for k, v in times.items()}
print('  '.join(f'{k} {v:.3f} ms ({med["dense"] / v:.2f}x dense)' for k, v in med.items()))
