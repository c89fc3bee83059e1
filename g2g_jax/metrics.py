"""Metric writers (JSON lines, TensorBoard) and the progress display."""

import json
import os
import sys
import time
from typing import Any

import numpy as np

METRICS_FILE = 'metrics.jsonl'


def _plain(value: Any):
  """JSON-safe scalars: numpy and jax scalars become Python numbers."""
  if isinstance(value, dict):
    return {k: _plain(v) for k, v in value.items()}
  if isinstance(value, (list, tuple)):
    return [_plain(v) for v in value]
  if hasattr(value, 'item') and np.ndim(value) == 0:
    return value.item()
  return value


class MetricWriter:
  """Appends one JSON object per record to WORKDIR/metrics.jsonl, and TensorBoard scalars.

  A record must hold `step`. On resume, `truncate_after(step)` drops records newer
  than the restored checkpoint, so the file never shows a step twice.
  """

  def __init__(self, workdir: str, tensorboard: bool = True):
    self.path = os.path.join(workdir, METRICS_FILE)
    self._tb = None
    if tensorboard:
      from tensorboardX import SummaryWriter  # noqa: PLC0415 (optional, slow import)

      self._tb = SummaryWriter(os.path.join(workdir, 'tensorboard'))

  def records(self) -> list[dict]:
    return read_records(os.path.dirname(self.path))

  def truncate_after(self, step: int):
    kept = [r for r in self.records() if r['step'] <= step]
    if len(kept) == len(self.records()):
      return
    tmp = self.path + '.tmp'
    with open(tmp, 'w') as f:
      f.writelines(json.dumps(r) + '\n' for r in kept)
    os.replace(tmp, self.path)

  def write(self, record: dict):
    record = _plain(record)
    with open(self.path, 'a') as f:
      f.write(json.dumps(record) + '\n')
      f.flush()
      os.fsync(f.fileno())
    if self._tb is not None:
      for key, value in record.items():
        if key != 'step' and isinstance(value, (int, float)) and not isinstance(value, bool):
          self._tb.add_scalar(key, value, record['step'])
      self._tb.flush()

  def close(self):
    if self._tb is not None:
      self._tb.close()


def read_records(workdir: str) -> list[dict]:
  """The records of WORKDIR/metrics.jsonl, oldest first ([] when there is none)."""
  path = os.path.join(workdir, METRICS_FILE)
  if not os.path.exists(path):
    return []
  with open(path) as f:
    return [json.loads(line) for line in f if line.strip()]


def read_runs(out_dir: str) -> dict[str, list[dict]]:
  """The records of every run folder under out_dir that has a metrics.jsonl."""
  runs = {name: read_records(os.path.join(out_dir, name)) for name in sorted(os.listdir(out_dir))}
  return {name: records for name, records in runs.items() if records}


def eval_records(records: list[dict]) -> list[dict]:
  """The per-epoch evaluation records of a run (mask-update records have kind 'rewire')."""
  return [r for r in records if r.get('kind', 'eval') == 'eval']


def run_seconds(records: list[dict]) -> tuple[float | None, float]:
  """(compile s, train s) of a run: the seconds its loop spent compiling ahead (summed over
  restarts; None for a run from before e292a10, whose epoch 1 includes compiling) and the
  epochs' training seconds."""
  evals = eval_records(records)
  compiled = [r['compile_seconds'] for r in evals if 'compile_seconds' in r]
  return (sum(compiled) if compiled else None), sum(r['epoch_seconds'] for r in evals)


class Progress:
  """Shows how far an epoch has got: a live bar on a terminal, else periodic lines."""

  def __init__(self, mode: str = 'auto', stream=None):
    self.stream = stream or sys.stderr
    if mode == 'auto':
      mode = 'bar' if getattr(self.stream, 'isatty', lambda: False)() else 'lines'
    self.mode = mode
    self._t0 = time.perf_counter()

  def start_epoch(self):
    self._t0 = time.perf_counter()

  def update(self, epoch: int, done: int, total: int, loss: float, accuracy: float, examples: int):
    if self.mode == 'none':
      return
    elapsed = max(time.perf_counter() - self._t0, 1e-9)
    rate = examples / elapsed
    eta = elapsed / max(done, 1) * (total - done)
    text = f'epoch {epoch} {done}/{total} loss {loss:.4f} acc {accuracy:.4f} {rate:,.0f} ex/s eta {eta:.0f}s'
    if self.mode == 'bar':
      filled = int(30 * done / max(total, 1))
      self.stream.write('\r[' + '#' * filled + '.' * (30 - filled) + '] ' + text + '   ')
    else:
      self.stream.write(text + '\n')
    self.stream.flush()

  def end_epoch(self):
    if self.mode == 'bar':
      self.stream.write('\n')
      self.stream.flush()
