"""Metric records: what they hold, how they are written (JSON lines, TensorBoard) and read,
the running sums of an epoch, and the progress display."""

import json
import os
import sys
import time
from typing import Any

import numpy as np
from absl import logging

from g2g_jax import workdir as workdir_lib
from g2g_jax.workdir import WorkdirError

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

  A record must hold `step`. Resuming at step s (resume_step), the writer keeps the
  records up to s: from the file, or from `backup` (the checkpoint's copy) where the file
  lost some, so the file never shows a step twice nor loses its history; TensorBoard
  hides its points after s.
  """

  def __init__(
    self, workdir: str, resume_step: int = 0, backup: list | None = None, primary: bool = True, tensorboard: bool = True
  ):
    self.path = os.path.join(workdir, METRICS_FILE)
    self._primary = primary  # only one process of a run writes files; the others keep the records
    on_disk = read_records(workdir)
    kept = [r for r in on_disk if r['step'] <= resume_step]
    saved = [r for r in backup or [] if r['step'] <= resume_step]
    if len(saved) > len(kept):
      logging.warning(
        '%s held %d of the %d records up to step %d: restored them from the checkpoint',
        *(self.path, len(kept), len(saved), resume_step),
      )
      kept = saved
    self._records = kept
    if primary and (kept != on_disk or not _ends_whole(self.path)):
      self._rewrite()
    self._tb = None
    self._tb_dir = os.path.join(workdir, 'tensorboard')
    if tensorboard and primary:
      from tensorboardX import SummaryWriter  # noqa: PLC0415 (optional, slow import)

      purge = resume_step + 1 if resume_step else None  # drop points after the restored step
      with workdir_lib.writing(self._tb_dir):
        # TensorBoardX names files by the second: a writer opened in the same second would overwrite
        self._tb = SummaryWriter(self._tb_dir, purge_step=purge, filename_suffix=f'.{time.time_ns()}')
        self._tb.flush()

  def records(self) -> list[dict]:
    """The records written so far, oldest first."""
    return list(self._records)

  def _rewrite(self):
    tmp = f'{self.path}.tmp{os.getpid()}'
    try:
      with workdir_lib.writing(self.path), open(tmp, 'w') as f:
        f.writelines(json.dumps(r, allow_nan=False) + '\n' for r in self._records)
        f.flush()
        os.fsync(f.fileno())
      with workdir_lib.writing(self.path):
        os.replace(tmp, self.path)
    finally:
      if os.path.exists(tmp):  # a failed rewrite leaves the file as it was
        os.remove(tmp)

  def write(self, record: dict):
    record = _plain(record)
    line = json.dumps(record, allow_nan=False) + '\n'  # Infinity and NaN are not JSON
    self._records.append(record)
    if not self._primary:
      return
    with workdir_lib.writing(self.path), open(self.path, 'a') as f:
      f.write(line)
      f.flush()
      os.fsync(f.fileno())
    if self._tb is not None:
      with workdir_lib.writing(self._tb_dir):
        for key, value in record.items():
          if key != 'step' and isinstance(value, (int, float)) and not isinstance(value, bool):
            self._tb.add_scalar(key, value, record['step'])
        self._tb.flush()

  def close(self):
    if self._tb is not None:
      with workdir_lib.writing(self._tb_dir):
        self._tb.close()


def _ends_whole(path: str) -> bool:
  """Whether a file is missing, empty, or ends with a newline (no half-written last line)."""
  if not os.path.exists(path) or os.path.getsize(path) == 0:
    return True
  with open(path, 'rb') as f:
    f.seek(-1, os.SEEK_END)
    return f.read(1) == b'\n'


class BadLine(ValueError):
  """A line of a JSON-lines file that is not a record; the message names the file and the line."""


def read_json_lines(path: str, required: set[str], what: str) -> tuple[list[dict], str | None]:
  """The records (JSON objects with the `required` keys) of a JSON-lines file, oldest first
  ([] when there is no file), and a warning when its last line was left out as half-written
  (no newline after it: an append that never finished). Any other line that is not a record
  raises BadLine: '<path>: line <n> is not a <what> (<why>)'."""
  if not os.path.exists(path):
    return [], None
  with open(path) as f:
    lines = f.read().split('\n')
  records, warning = [], None
  for number, line in enumerate(lines, 1):
    if not line.strip():
      continue
    try:
      record = json.loads(line)
      if not isinstance(record, dict) or not required <= set(record):
        raise ValueError(f'not an object with {", ".join(sorted(required))}')
    except ValueError as e:
      if number == len(lines):
        warning = f'{path}: line {number} is half-written ({e}); left out'
        continue
      raise BadLine(f'{path}: line {number} is not a {what} ({e})') from None
    records.append(record)
  return records, warning


def read_records(workdir: str) -> list[dict]:
  """The records of WORKDIR/metrics.jsonl, oldest first ([] when there is none). A
  half-written last line is left out; any other line that is not a record is a WorkdirError
  naming the file and the line."""
  try:
    records, warning = read_json_lines(os.path.join(workdir, METRICS_FILE), {'step'}, 'record')
  except BadLine as e:
    raise WorkdirError(f'{e}; move the file away to resume') from None
  if warning:
    logging.warning('%s', warning)
  return records


def read_runs(out_dir: str) -> dict[str, list[dict]]:
  """The records of every run folder under out_dir that has a metrics.jsonl."""
  runs = {name: read_records(os.path.join(out_dir, name)) for name in sorted(os.listdir(out_dir))}
  return {name: records for name, records in runs.items() if records}


def eval_records(records: list[dict]) -> list[dict]:
  """The per-epoch evaluation records of a run (mask-update records have kind 'rewire')."""
  return [r for r in records if r.get('kind', 'eval') == 'eval']


def run_seconds(records: list[dict]) -> tuple[float | None, float]:
  """(compile s, train s) of a run: the seconds its loop spent compiling ahead (summed over
  restarts; None for runs that did not record it) and the epochs' training seconds."""
  evals = eval_records(records)
  compiled = [r['compile_seconds'] for r in evals if 'compile_seconds' in r]
  return (sum(compiled) if compiled else None), sum(r['epoch_seconds'] for r in evals)


class EpochSums:
  """Running sums of the current epoch's training metrics, per seed."""

  NORMS = ('l2_params', 'l2_updates')  # the latest step's global norms, per seed (l2_grads: the loop's)

  def __init__(self, num_seeds: int, loss=None, correct=None, count=0, seconds=0.0, norms=None):
    self.loss = np.zeros(num_seeds) if loss is None else np.asarray(loss, np.float64)
    self.correct = np.zeros(num_seeds) if correct is None else np.asarray(correct, np.float64)
    self.count, self.seconds = count, seconds
    self.norms = dict(norms or {})

  def add(self, metrics: dict, last_step: int, batch_size: int) -> tuple[float, int, int] | None:
    """Adds the metrics of consecutive steps up to `last_step` (host arrays [steps, seeds]).
    Returns (loss, step, replica) of the first non-finite loss, adding nothing, or None."""
    losses, accs = metrics['loss'], metrics['accuracy']
    bad = np.argwhere(~np.isfinite(losses))
    if bad.size:
      j, k = bad[0]
      return float(losses[j, k]), last_step - len(losses) + 1 + int(j), int(k)
    for loss, acc in zip(losses, accs, strict=True):  # step by step: resume-exact sums
      self.loss += loss.astype(np.float64) * batch_size
      self.correct += acc.astype(np.float64) * batch_size
      self.count += batch_size
    self.norms.update({k: metrics[k][-1].astype(np.float64).tolist() for k in self.NORMS if k in metrics})
    return None

  def mean_loss(self) -> float:
    return float(np.mean(self.loss)) / max(self.count, 1)

  def mean_accuracy(self) -> float:
    return float(np.mean(self.correct)) / max(self.count, 1)

  def to_meta(self) -> dict:
    sums = {'loss': self.loss.tolist(), 'correct': self.correct.tolist(), 'count': self.count, 'seconds': self.seconds}
    return {**sums, 'norms': self.norms}


def per_seed(name: str, values) -> dict:
  """A metric of every seed: the value itself for one seed; else mean, std and the list."""
  values = np.asarray(values, np.float64)
  if values.size == 1:
    return {name: float(values[0])}
  return {name: float(values.mean()), f'{name}_std': float(values.std(ddof=1)), f'{name}_per_seed': values.tolist()}


def eval_record(*, step, epoch, sums: EpochSums, test: dict, best, accts: list[dict], **extra) -> dict:
  """The record of one evaluation: the epoch's training metrics, the test metrics and the
  accounting (means over seeds; per-seed lists with num_seeds > 1), plus `extra` fields."""
  seeds = len(accts)
  record = {
    'kind': 'eval',
    'step': step,
    'epoch': epoch,
    **per_seed('train_loss', sums.loss / sums.count),
    **per_seed('train_accuracy', sums.correct / sums.count),
    **per_seed('test_loss', test['loss']),
    **per_seed('test_accuracy', test['accuracy']),
    **per_seed('best_test_accuracy', best),
    **{k: v for name, value in sums.norms.items() for k, v in per_seed(name, value).items()},
    'sparsity': float(np.mean([a['sparsity'] for a in accts])),
    'layer_density': {
      name: float(np.mean([a['layer_density'][name] for a in accts])) for name in accts[0]['layer_density']
    },
    'head_params': int(round(np.mean([a['head_params'] for a in accts]))),
    'total_params': int(round(np.mean([a['total_params'] for a in accts]))),
    'flops_per_example': float(np.mean([a['flops_per_example'] for a in accts])),
    **extra,
  }
  if seeds > 1:
    record['num_seeds'] = seeds
  return record


def eval_line(record: dict) -> str:
  seeds = record.get('num_seeds', 1)
  return (
    f'epoch {record["epoch"]} step {record["step"]}: train loss {record["train_loss"]:.4f} '
    f'acc {record["train_accuracy"]:.4f} | test loss {record["test_loss"]:.4f} acc {record["test_accuracy"]:.4f} '
    f'(best {record["best_test_accuracy"]:.4f}) | {record["examples_per_sec"]:.0f} ex/s'
    + (f' | mean of {seeds} seeds, test acc std {record["test_accuracy_std"]:.4f}' if seeds > 1 else '')
  )


def rewire_record(step: int, seconds: float, info: dict, num_seeds: int) -> tuple[dict, str]:
  """(record, log line) of one mask update, from update_masks' per-layer info (host arrays)."""
  record = {'kind': 'rewire', 'step': step, 'seconds': seconds}
  parts = []
  for layer, values in info.items():
    summary = {}
    for key, value in values.items():
      # Counts are ints, the rest floats; a turnover of -1 means "no update before".
      seeds = [None if key == 'turnover' and v < 0 else v for v in np.atleast_1d(value).tolist()]
      record[f'{layer}/{key}'] = seeds[0] if num_seeds == 1 else seeds
      known = [v for v in seeds if v is not None]
      summary[key] = float(np.mean(known)) if known else None
    groups = f' intra {summary["intra"]:.0f} inter {summary["inter"]:.0f}' if 'intra' in summary else ''
    turnover = f' turnover {summary["turnover"]:.3f}' if summary['turnover'] is not None else ''
    regrown = f' (regrown in place {summary["regrown"]:.0f})' if summary.get('regrown') else ''
    parts.append(
      f'{layer}: -{summary["pruned"]:.0f} +{summary["grown"]:.0f}{regrown}{groups} '
      f'|w|pruned {summary["pruned_mean_abs_weight"]:.4f}{turnover}'
    )
  mean = f' (mean of {num_seeds} seeds)' if num_seeds > 1 else ''
  return record, f'rewire at step {step} ({seconds:.3f}s){mean}: ' + '; '.join(parts)


class Progress:
  """Shows how far an epoch has got: a live bar, periodic lines, or nothing."""

  def __init__(self, mode: str = 'lines', stream=None):
    self.stream = stream or sys.stderr
    self.mode = mode  # 'bar' | 'lines' | 'none'
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
