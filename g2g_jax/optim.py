"""The optax chain and learning-rate schedule."""

import dataclasses

import optax

OPTIMIZERS = ('adam', 'sgd')
SCHEDULES = ('cosine', 'constant')


@dataclasses.dataclass(frozen=True)
class OptimSpec:
  optimizer: str = 'adam'  # 'adam' | 'sgd' (with momentum)
  learning_rate: float = 1e-3  # peak learning rate
  weight_decay: float = 1e-4  # L2 coefficient, added to the gradient as torch's Adam does
  schedule: str = 'cosine'  # 'cosine' (to 0 at the last step) | 'constant'
  warmup_steps: int = 0  # linear warm-up from 0, in optimizer steps
  b1: float = 0.9  # Adam beta1, or SGD momentum
  b2: float = 0.999  # Adam beta2
  eps: float = 1e-8  # Adam epsilon


def make_schedule(spec: OptimSpec, total_steps: int) -> optax.Schedule:
  """Learning rate per optimizer step (the cosine decays per step, not per epoch)."""
  if spec.schedule == 'constant':
    main = optax.constant_schedule(spec.learning_rate)
  else:
    main = optax.cosine_decay_schedule(spec.learning_rate, max(total_steps - spec.warmup_steps, 1))
  if spec.warmup_steps == 0:
    return main
  warmup = optax.linear_schedule(0.0, spec.learning_rate, spec.warmup_steps)
  return optax.join_schedules([warmup, main], [spec.warmup_steps])


def make_optimizer(spec: OptimSpec, total_steps: int) -> optax.GradientTransformation:
  """L2 decay added to the gradient, then Adam (or momentum SGD), then the schedule.

  This is torch.optim.Adam(weight_decay=wd), not AdamW: the decay term goes through
  the adaptive scaling. A pruned weight is 0, so its decay term is 0 too.
  """
  if spec.optimizer == 'adam':
    scale = optax.scale_by_adam(b1=spec.b1, b2=spec.b2, eps=spec.eps)
  else:
    scale = optax.trace(decay=spec.b1)
  return optax.chain(
    optax.add_decayed_weights(spec.weight_decay),
    scale,
    optax.scale_by_learning_rate(make_schedule(spec, total_steps)),
  )
