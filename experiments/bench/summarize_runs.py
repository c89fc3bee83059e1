"""One line per run folder: accuracy, compile and training seconds, examples/s.

python experiments/bench/summarize_runs.py OUT_DIR

compile s: what the loop spent compiling its programs ahead (the first evaluation
record's compile_seconds; the sum over restarts for a resumed run; '-' for runs from
before it was recorded, whose epoch 1 includes compiling). train s: the epochs' time.
total s: the two together, the figure to compare loops by.
"""

import sys

from g2g_jax import metrics


def main(out_dir):
  print(
    f'{"run":<18} {"epochs":>6} {"seeds":>5} {"final":>7} {"best":>7} '
    f'{"compile s":>9} {"train s":>8} {"total s":>8} {"ex/s (ep 2+)":>13}'
  )
  for name, records in metrics.read_runs(out_dir).items():
    evals = [r for r in records if r.get('kind', 'eval') == 'eval']
    last = evals[-1]
    later = evals[1:] or evals
    rate = sum(r['examples_per_sec'] * r['epoch_seconds'] for r in later) / sum(r['epoch_seconds'] for r in later)
    compiled = [r['compile_seconds'] for r in evals if 'compile_seconds' in r]
    train = sum(r['epoch_seconds'] for r in evals)
    compile_s, total = (
      (f'{sum(compiled):9.1f}', f'{sum(compiled) + train:8.1f}') if compiled else (f'{"-":>9}', f'{train:8.1f}')
    )
    print(
      f'{name:<18} {last["epoch"]:6d} {last.get("num_seeds", 1):5d} {last["test_accuracy"]:7.4f} '
      f'{last["best_test_accuracy"]:7.4f} {compile_s} {train:8.1f} {total} {rate:13.0f}'
    )


if __name__ == '__main__':
  main(sys.argv[1])
