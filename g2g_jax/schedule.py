"""When the training loop's events fall: one `due` predicate and the chunks of steps between events.

Steps count optimizer steps done: an event "at step s" runs right after the s-th step.
Pure Python, no JAX.
"""

import dataclasses


def due(step: int, every: int, start: int = 0, end: int = 0) -> bool:
  """Whether a periodic event runs at `step`: a positive multiple of `every` in [start, end]
  (end = 0: no end)."""
  return step > 0 and step % every == 0 and start <= step and (end == 0 or step <= end)


def scan_chunk_steps(steps_per_epoch: int, log_every_steps: int) -> int:
  """Steps per scanned chunk: the largest divisor of the epoch's steps that is at most
  log_every_steps, so an epoch is whole chunks of one length (one program). When that
  divisor is under half of log_every_steps (say, a prime number of steps per epoch),
  log_every_steps itself, and each epoch ends with a few single steps."""
  cap = min(log_every_steps, steps_per_epoch)
  best = max(d for d in range(1, cap + 1) if steps_per_epoch % d == 0)
  return best if 2 * best >= cap else log_every_steps


@dataclasses.dataclass(frozen=True)
class Schedule:
  """The events of one run, by step."""

  steps_per_epoch: int
  num_epochs: int
  chunk_steps: int  # steps a runner runs per call at most: metrics are read (and checked) this often
  eval_every_epochs: int
  checkpoint_every_epochs: int
  rewire_every_steps: int = 0  # 0: no mask updates
  rewire_start_steps: int = 0
  rewire_end_steps: int = 0  # 0: no end
  halt_after_steps: int = 0  # 0: never

  @property
  def total_steps(self) -> int:
    return self.steps_per_epoch * self.num_epochs

  def epoch_end(self, step: int) -> bool:
    return due(step, self.steps_per_epoch)

  def rewire(self, step: int) -> bool:
    return bool(self.rewire_every_steps) and due(
      step, self.rewire_every_steps, self.rewire_start_steps, self.rewire_end_steps
    )

  def evaluate(self, step: int) -> bool:
    return self.epoch_end(step) and (
      due(step, self.eval_every_epochs * self.steps_per_epoch) or step == self.total_steps
    )

  def checkpoint(self, step: int) -> bool:
    """At the end of every checkpoint_every_epochs-th epoch, at the end of training, and at the halt."""
    at_epoch = self.epoch_end(step) and due(step, self.checkpoint_every_epochs * self.steps_per_epoch)
    return at_epoch or step == self.total_steps or self.halt(step)

  def halt(self, step: int) -> bool:
    return step == self.halt_after_steps > 0

  def end(self, step: int) -> int:
    """The step a process that starts at `step` stops at: the halt step ahead, else the run's end."""
    return min(self.total_steps, self.halt_after_steps) if self.halt_after_steps > step else self.total_steps

  def next_chunk(self, step: int) -> int:
    """Steps from `step` to the next event: a chunk's end, an epoch's end, a mask update
    (cut at every multiple of rewire_every_steps) or the halt step."""
    events = [self.chunk_steps - step % self.chunk_steps, self.steps_per_epoch - step % self.steps_per_epoch]
    if self.rewire_every_steps:
      events.append(self.rewire_every_steps - step % self.rewire_every_steps)
    if self.halt_after_steps > step:
      events.append(self.halt_after_steps - step)
    return min(events)

  def chunks(self, step: int) -> list[int]:
    """The sizes of the chunks a process that starts at `step` runs."""
    sizes, end = [], self.end(step)
    while step < end:
      sizes.append(self.next_chunk(step))
      step += sizes[-1]
    return sizes
