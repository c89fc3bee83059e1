"""The optax chain and learning-rate schedule."""

import dataclasses

import optax

from g2g_jax.fields import Choice, Float, Int, check, field

OPTIMIZERS = ('adam', 'sgd')
SCHEDULES = ('cosine', 'constant')


@dataclasses.dataclass(frozen=True)
class OptimSpec:
  """The optimizer and its learning-rate schedule (config.optim)."""

  optimizer: str = field('adam', Choice(OPTIMIZERS), "'adam' | 'sgd' (momentum b1)")
  learning_rate: float = field(1e-3, Float(0.0, lo_open=True), 'peak learning rate')
  weight_decay: float = field(1e-4, Float(0.0), "L2 coefficient added to the gradient (torch Adam's)")
  schedule: str = field('cosine', Choice(SCHEDULES), "'cosine' (per step, to 0 at the last step) | 'constant'")
  warmup_steps: int = field(0, Int(0), 'optimizer steps of linear warm-up from 0')
  b1: float = field(0.9, Float(0.0, 1.0), 'Adam beta1 / SGD momentum')
  b2: float = field(0.999, Float(0.0, 1.0), 'Adam beta2')
  eps: float = field(1e-8, Float(0.0, lo_open=True), 'Adam epsilon')

  def __post_init__(self):
    check(self)


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
