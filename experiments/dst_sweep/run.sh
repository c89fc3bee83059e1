#!/usr/bin/env bash
# Fashion-MNIST, 20 epochs, G2G mixer p' = 0.15: one static run and one run per
# prune x grow pair, every 1000 steps, fraction 0.10. Usage: run.sh OUT_DIR [SEED]
# A rerun skips finished runs (each workdir resumes or returns at once).
set -euo pipefail
out=${1:?usage: run.sh OUT_DIR [SEED]}
seed=${2:-0}
cd "$(dirname "$0")/../.."
python=${PYTHON:-python}
run() {
  local name=$1; shift
  $python -m g2g_jax.main --config=configs/dst.py --workdir="$out/$name" \
    --config.num_epochs=20 --config.seed="$seed" --config.progress=none "$@" > "$out/$name.log" 2>&1
  echo "$name done"
}
mkdir -p "$out"
run static --config.rewiring.prune=none --config.rewiring.grow=none
for prune in magnitude random hebbian mixed; do
  for grow in random hebbian gradient; do
    run "${prune}_${grow}" --config.rewiring.prune=$prune --config.rewiring.grow=$grow
  done
done
