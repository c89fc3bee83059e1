#!/usr/bin/env bash
# The benchmark and full Fashion-MNIST runs on a machine with one GPU and no network.
#
# Here (with network), from the repository root, once:
#   bash experiments/bench/gpu.sh prepare
# puts what the GPU machine lacks into experiments/bench/.carry/ (git-ignored, about
# 31 MB): pure-Python wheels of ml_collections and tensorboardX, and the Fashion-MNIST
# IDX files. The GPU machine must already have jax (CUDA), flax, optax, orbax-checkpoint
# and absl-py; the project's lent H100 image has them.
#
# There, from the repository root (carry experiments/bench/.carry):
#   bash experiments/bench/gpu.sh run OUT_DIR
# prints and writes to OUT_DIR: the benchmark (dense / masked / tiles at widths 1024
# and 4096), then 30-epoch G2G runs with the scanned and the step-by-step loop, the
# tiled G2G run, FC v2, and G2G with 4 seeds in one program.
set -euo pipefail
cd "$(dirname "$0")/../.."
carry=experiments/bench/.carry

if [ "${1:-}" = prepare ]; then
  mkdir -p "$carry/whl" "$carry/fashion-mnist"
  python3 -m pip download -q --no-deps --only-binary=:all: -d "$carry/whl" ml_collections==1.1.0 tensorboardX==2.6.5
  src=${FASHION_MNIST_DIR:-/usr/share/datasets/fashion-mnist}
  cp "$src"/*-ubyte.gz "$carry/fashion-mnist/"
  du -sh "$carry"
  exit 0
fi

[ "${1:-}" = run ] || { echo "usage: $0 prepare | run OUT_DIR" >&2; exit 2; }
out=${2:?usage: $0 run OUT_DIR}
mkdir -p "$out"
python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/g2g-site "$carry"/whl/*.whl
export PYTHONPATH="/tmp/g2g-site:$PWD" PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$out/gpu.txt" || true
python3 experiments/bench/bench.py 2>&1 | tee "$out/bench.txt"
train() {
  local name=$1 t0=$SECONDS; shift
  python3 -m g2g_jax.main --config=configs/fashion_mnist.py"$ROW" \
    --workdir="/tmp/g2g-runs/$name" --config.data.dir="$carry" --config.progress=none "$@" \
    > "$out/$name.log" 2>&1 || echo "$name FAILED"
  echo "$name wall $((SECONDS - t0)) s" | tee -a "$out/walls.txt"
  tail -n 1 "/tmp/g2g-runs/$name/metrics.jsonl" | tee -a "$out/runs.jsonl" || true
}
ROW='' train g2g_scan --config.loop=scan
ROW='' train g2g_steps --config.loop=steps
ROW='' train g2g_tiles_scan --config.loop=scan --config.connectivity.inter=tiles
ROW=':fc_v2' train fc_v2_scan --config.loop=scan
ROW='' train g2g_scan_4seeds --config.loop=scan --config.num_seeds=4
