"""Prints one line per run of run.sh: final and best test accuracy, rewiring time share."""

import sys

from g2g_jax import metrics


def main(out_dir):
  print(f'{"run":<22} {"final":>7} {"best":>7} {"updates":>7} {"update s":>9} {"share":>7} {"train s":>8}')
  for name, rows in metrics.read_runs(out_dir).items():
    evals = metrics.eval_records(rows)
    rewires = [r for r in rows if r.get('kind') == 'rewire']
    train_s = sum(r['epoch_seconds'] for r in evals)
    update_s = sum(r['seconds'] for r in rewires)
    last = evals[-1]
    print(
      f'{name:<22} {last["test_accuracy"]:7.4f} {last["best_test_accuracy"]:7.4f} {len(rewires):7d} '
      f'{update_s:9.2f} {update_s / train_s:7.2%} {train_s:8.1f}'
    )


if __name__ == '__main__':
  main(sys.argv[1])
