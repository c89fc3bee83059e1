#!/usr/bin/env bash
# Whole-run timings on this machine (CPU), one after another, for experiments/bench/README.md.
#   bash experiments/bench/cpu_runs.sh OUT_DIR [full|short]
# full (default): 30-epoch Fashion-MNIST runs of G2G (scattered), G2G tiles and FC v2,
# then 3-epoch runs comparing the step-by-step and scanned loops, and 1 vs 4 seeds.
# short: only the 3-epoch comparisons. Summary: python experiments/bench/summarize_runs.py OUT_DIR
set -euo pipefail
out=${1:?usage: cpu_runs.sh OUT_DIR [full|short]}
mode=${2:-full}
cd "$(dirname "$0")/../.."
python=${PYTHON:-python}
mkdir -p "$out"
run() {
  local name=$1 row=$2; shift 2
  $python -m g2g_jax.main --config=configs/fashion_mnist.py$row --workdir="$out/$name" --config.progress=none "$@" \
    > "$out/$name.log" 2>&1
  echo "$name done"
}
if [ "$mode" = full ]; then
  run g2g_30ep ''
  run g2g_tiles_30ep '' --config.connectivity.inter=tiles
  run fc_v2_30ep ':fc_v2'
fi
run g2g_3ep_steps '' --config.num_epochs=3 --config.loop=steps
run g2g_3ep_scan '' --config.num_epochs=3 --config.loop=scan
run g2g_3ep_seeds1 '' --config.num_epochs=3 --config.num_seeds=1
run g2g_3ep_seeds4 '' --config.num_epochs=3 --config.num_seeds=4
