"""Seed replicas: independent train states stacked on a leading axis, and functions vmapped over it.

One seed runs unstacked (a vmap of size 1 costs time: experiments/bench/HISTORY.md); S > 1
seeds run as one program, vmapped.
"""

import jax
import jax.numpy as jnp
import numpy as np


def stack(states: list):
  """Pytrees of one structure (static fields included) stacked on a new leading axis."""
  leaves = [jax.tree.leaves(st) for st in states]
  return jax.tree.unflatten(jax.tree.structure(states[0]), [jnp.stack(xs) for xs in zip(*leaves, strict=True)])


def replica(states, k: int):
  """Replica k of stacked states."""
  return jax.tree.map(lambda x: x[k], states)


def each(states) -> list:
  """The replicas of stacked states, or [state] for one seed's (unstacked) state."""
  return [states] if np.ndim(states.step) == 0 else [replica(states, k) for k in range(np.shape(states.step)[0])]


def over_seeds(fn, num_seeds: int, in_axes=0):
  """fn over every replica as one traceable function: fn itself for one seed, else its vmap."""
  return fn if num_seeds == 1 else jax.vmap(fn, in_axes=in_axes)
