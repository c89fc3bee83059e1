"""One line per run folder: accuracy, training seconds (epochs 2+ and all), examples/s.

python experiments/bench/summarize_runs.py OUT_DIR
"""

import sys

from g2g_jax import metrics


def main(out_dir):
  print(f'{"run":<18} {"epochs":>6} {"seeds":>5} {"final":>7} {"best":>7} {"train s":>8} {"ex/s (ep 2+)":>13}')
  for name, records in metrics.read_runs(out_dir).items():
    evals = [r for r in records if r.get('kind', 'eval') == 'eval']
    last = evals[-1]
    later = evals[1:] or evals  # epoch 1 includes compilation
    rate = sum(r['examples_per_sec'] * r['epoch_seconds'] for r in later) / sum(r['epoch_seconds'] for r in later)
    print(
      f'{name:<18} {last["epoch"]:6d} {last.get("num_seeds", 1):5d} {last["test_accuracy"]:7.4f} '
      f'{last["best_test_accuracy"]:7.4f} {sum(r["epoch_seconds"] for r in evals):8.1f} {rate:13.0f}'
    )


if __name__ == '__main__':
  main(sys.argv[1])
