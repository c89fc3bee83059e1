"""One line per run folder: accuracy, compile and training seconds, examples/s.

python experiments/bench/summarize_runs.py OUT_DIR [--ratio=NUMERATOR/DENOMINATOR ...]

compile s: what the loop spent compiling its programs ahead (the first evaluation
record's compile_seconds; the sum over restarts for a resumed run; '-' for runs from
before it was recorded, whose epoch 1 includes compiling). train s: the epochs' time.
total s: the two together, the figure to compare loops by. Each --ratio=A/B prints run
A's total s over run B's.
"""

import argparse
import math

from g2g_jax import metrics


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument('out_dir')
  parser.add_argument('--ratio', action='append', default=[], metavar='A/B', help="run A's total s over run B's")
  args = parser.parse_args(argv)
  runs = metrics.read_runs(args.out_dir)
  print(
    f'{"run":<18} {"epochs":>6} {"seeds":>5} {"final":>7} {"best":>7} '
    f'{"compile s":>9} {"train s":>8} {"total s":>8} {"ex/s (ep 2+)":>13}'
  )
  for name, records in runs.items():
    evals = metrics.eval_records(records)
    last = evals[-1]
    later = evals[1:] or evals
    rate = sum(r['examples_per_sec'] * r['epoch_seconds'] for r in later) / sum(r['epoch_seconds'] for r in later)
    compiled, train = metrics.run_seconds(records)
    compile_s = f'{"-":>9}' if compiled is None else f'{compiled:9.1f}'
    print(
      f'{name:<18} {last["epoch"]:6d} {last.get("num_seeds", 1):5d} {last["test_accuracy"]:7.4f} '
      f'{last["best_test_accuracy"]:7.4f} {compile_s} {train:8.1f} {(compiled or 0.0) + train:8.1f} {rate:13.0f}'
    )
  for pair in args.ratio:
    a, _, b = pair.partition('/')
    if not b:
      parser.error(f'--ratio={pair!r}: expected RUN_A/RUN_B')
    total = {n: sum(c or 0.0 for c in metrics.run_seconds(runs[n])) if n in runs else math.nan for n in (a, b)}
    print(f'{a} / {b}: {total[a]:.1f} s / {total[b]:.1f} s = {total[a] / total[b]:.2f}x (compile + training)')


if __name__ == '__main__':
  main()
