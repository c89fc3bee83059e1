"""Which library runs XLA:CPU's matmuls (config.cpu_dots), as compile options for jax.jit.

JAX 0.10's XLA:CPU hands matmuls, convolutions and reductions to YNNPACK by default.
For the tiled layers' batched matmuls Eigen is faster on the project's 2-core CPU
(a train step of 11.0 ms against 14.2 ms), for dense layers YNNPACK is (26.3 ms against
29.0 ms): experiments/bench/README.md.
"""

import functools

import jax
import jax.numpy as jnp
from absl import logging

CPU_DOTS = ('auto', 'xla', 'eigen')
# XLA's default library fusions minus its dots: the compiled program is otherwise the same.
EIGEN_DOTS = {
  'xla_cpu_experimental_ynn_fusion_type': 'LIBRARY_FUSION_TYPE_INDIVIDUAL_CONVOLUTION,LIBRARY_FUSION_TYPE_REDUCE'
}


@functools.cache
def eigen_dots_supported() -> bool:
  """Whether this jaxlib takes the option (it is experimental; others may not know it)."""
  try:
    jax.jit(lambda x: x @ x, compiler_options=EIGEN_DOTS).lower(jnp.ones((2, 2))).compile()
    return True
  except Exception as e:  # noqa: BLE001  (an XLA error whose type differs between versions)
    logging.warning("config.cpu_dots 'eigen' needs %s, which this jaxlib refused (%s): XLA's dots", EIGEN_DOTS, e)
    return False


def use_eigen_dots(cpu_dots: str, tiled: bool) -> bool:
  """config.cpu_dots resolved on this backend: 'auto' means Eigen when a layer is tiled.

  False off the CPU (GPU and TPU ignore the field) and where the option is unknown.
  """
  eigen = cpu_dots == 'eigen' or (cpu_dots == 'auto' and tiled)
  return eigen and jax.default_backend() == 'cpu' and eigen_dots_supported()


def compiler_options(eigen_dots: bool) -> dict[str, str] | None:
  """The compiler_options for jax.jit: Eigen's dots, or None for XLA's defaults."""
  return dict(EIGEN_DOTS) if eigen_dots else None
