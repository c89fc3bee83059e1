"""Which library runs XLA:CPU's matmuls (config.cpu_dots), as compile options for jax.jit.

JAX 0.10's XLA:CPU hands matmuls, convolutions and reductions to YNNPACK by default.
On the project's 2-core CPU dense layers are faster with YNNPACK (a train step of 26.3 ms
against 29.0 ms with Eigen). The tiled layers' batched matmuls were faster with Eigen
(11.0 against 14.2 ms); since tiled layers compute feature-major the two are within 5%
either way (Eigen ahead at width 1024, YNNPACK at 4096): experiments/bench/README.md.
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


def compiler_options(cpu_dots: str, tiled: bool) -> dict[str, str] | None:
  """config.cpu_dots resolved on this backend, as jax.jit compiler_options: Eigen's dots,
  or None for XLA's defaults. 'auto' means Eigen when a hidden layer is tiled.

  None off the CPU (GPU and TPU ignore the field) and where the option is unknown.
  """
  eigen = cpu_dots == 'eigen' or (cpu_dots == 'auto' and tiled)
  return dict(EIGEN_DOTS) if eigen and jax.default_backend() == 'cpu' and eigen_dots_supported() else None
