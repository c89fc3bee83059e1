from g2g_jax import schedule


def test_due_is_every_positive_multiple_in_the_window():
  assert [s for s in range(0, 70) if schedule.due(s, 10, 20, 50)] == [20, 30, 40, 50]
  assert not schedule.due(0, 5)


def test_events_of_a_run():
  plan = schedule.Schedule(
    steps_per_epoch=8,
    num_epochs=3,
    chunk_steps=3,
    eval_every_epochs=2,
    checkpoint_every_epochs=1,
    rewire_every_steps=5,
    rewire_start_steps=6,
    halt_after_steps=12,
    rewire_end_steps=24,
  )
  assert [s for s in range(25) if plan.evaluate(s)] == [16, 24]  # every 2nd epoch, and the last
  assert [s for s in range(25) if plan.checkpoint(s)] == [8, 12, 16, 24]  # each epoch and the halt step
  assert [s for s in range(25) if plan.rewire(s)] == [10, 15, 20]
  # Chunks stop at syncs, epoch ends, every multiple of the rewire period, and the halt step.
  assert plan.chunks(0) == [3, 2, 1, 2, 1, 1, 2]  # to 3, 5, 6, 8, 9, 10, 12 (halt)
  assert plan.chunks(12) == [3, 1, 2, 2, 1, 3]  # past the halt, to the end: 15, 16, 18, 20, 21, 24
  assert plan.end(12) == 24 and plan.end(4) == 12
