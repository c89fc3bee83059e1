import io
import json
import os

import pytest

from g2g_jax import metrics


def test_writer_appends_json_lines_and_tensorboard(tmp_path):
  w = metrics.MetricWriter(str(tmp_path))
  for step in (1, 2, 3):
    w.write({'step': step, 'loss': 1.0 / step, 'name': 'x'})
  w.close()
  lines = (tmp_path / metrics.METRICS_FILE).read_text().splitlines()
  assert [json.loads(line)['step'] for line in lines] == [1, 2, 3]
  assert any(f.startswith('events.out.tfevents') for f in os.listdir(tmp_path / 'tensorboard'))


def test_resuming_keeps_records_up_to_the_restored_step(tmp_path):
  w = metrics.MetricWriter(str(tmp_path), tensorboard=False)
  for step in (10, 20, 30):
    w.write({'step': step})
  w.close()
  w = metrics.MetricWriter(str(tmp_path), resume_step=20, tensorboard=False)
  assert [r['step'] for r in w.records()] == [10, 20] == [r['step'] for r in metrics.read_records(str(tmp_path))]


def test_records_lost_from_the_file_come_back_from_the_checkpoints_copy(tmp_path):
  backup = [{'step': 10}, {'step': 20}, {'step': 30}]
  w = metrics.MetricWriter(str(tmp_path), resume_step=20, backup=backup, tensorboard=False)
  assert [r['step'] for r in metrics.read_records(str(tmp_path))] == [10, 20]
  w.write({'step': 25})
  assert [r['step'] for r in w.records()] == [10, 20, 25]


def test_a_record_that_is_not_json_is_refused(tmp_path):
  w = metrics.MetricWriter(str(tmp_path), tensorboard=False)
  with pytest.raises(ValueError):
    w.write({'step': 1, 'loss': float('inf')})
  assert metrics.read_records(str(tmp_path)) == []


def test_progress_lines_mode():
  out = io.StringIO()
  p = metrics.Progress('lines', stream=out)
  p.update(epoch=1, done=5, total=10, loss=0.5, accuracy=0.75, examples=100)
  assert 'epoch 1 5/10 loss 0.5000 acc 0.7500' in out.getvalue()


def test_run_seconds_sums_compiling_over_restarts_and_skips_rewire_records():
  records = [
    {'kind': 'eval', 'epoch_seconds': 5.0, 'compile_seconds': 1.5},
    {'kind': 'rewire', 'seconds': 0.25},
    {'kind': 'eval', 'epoch_seconds': 4.0},
    {'kind': 'eval', 'epoch_seconds': 4.5, 'compile_seconds': 0.5},  # a resumed process compiled again
  ]
  assert len(metrics.eval_records(records)) == 3
  assert metrics.run_seconds(records) == (2.0, 13.5)
  assert metrics.run_seconds([{'epoch_seconds': 6.0}]) == (None, 6.0)  # before compile time was recorded
