#!/usr/bin/env bash
# The benchmark, whole Fashion-MNIST runs and reproduction runs on a machine with one GPU
# and no network, in one prepared command.
#
# Here (with network), from the repository root, once:
#   bash experiments/bench/gpu.sh prepare
# puts what the GPU machine lacks into experiments/bench/.carry/ (git-ignored, about
# 32 MB): pure-Python wheels of ml_collections and tensorboardX, this project's pinned
# flax, optax, orbax-checkpoint and chex (used only if the machine's own fail the smoke
# run), and the Fashion-MNIST IDX files. The GPU machine must already have jax (CUDA) and
# the other dependencies; the project's lent H100 image has them.
#
# There, from the repository root (carry experiments/bench/.carry), with G2G_COMMIT set to
# the commit the copy was made from (results lines name it; the copy's git metadata can be stale):
#   G2G_COMMIT=<commit> bash experiments/bench/gpu.sh run OUT_DIR [SECONDS]
# writes to OUT_DIR (at most 8 files): log.txt (everything printed), bench.json (the
# benchmark's JSON line), runs.txt (the whole runs' summary), fashion_mnist.jsonl
# (reproduction results lines), logs.tgz (every run's log and metrics). Stages:
#   1. versions and a smoke run (falls back to the carried pinned wheels if it fails);
#   2. 30-epoch G2G runs with the scanned and the step-by-step loop, each cold (an empty
#      compilation cache) and warm (a second run reading it);
#   3. profile_steps.py (ms per step of the scanned chunk, the old chunk with a per-step
#      lax.cond, and the step loop, plus a trace summary), then the scanned loop with
#      while loops and conditionals in XLA's command buffers (CUDA graphs), and
#      scanned runs without XLA's autotuning and without Triton GEMMs (cold, as the
#      first scanned run: compile s and epoch rate against it);
#   4. bench.py: dense / masked / tiles at widths 1024 and 4096;
#   5. the GPU equality tests (tiles = masked, scan = steps, replicas = single runs);
#   6. while time is left: the tiled G2G run, G2G with 4 seeds in one program, FC v2;
#   7. reproduction runs (Fashion-MNIST dst and p_sweep to 3 seeds, REPRO_JOBS at once)
#      until SECONDS (default 540) after the start, then stop; finished runs are kept.
# G2G_EPOCHS=1 shortens the whole runs, to try the script out on a CPU.
set -uo pipefail
cd "$(dirname "$0")/../.."
carry=experiments/bench/.carry

if [ "${1:-}" = prepare ]; then
  set -e
  mkdir -p "$carry/whl" "$carry/pinned" "$carry/fashion-mnist"
  python3 -m pip download -q --no-deps --only-binary=:all: -d "$carry/whl" ml_collections==1.1.0 tensorboardX==2.6.5
  python3 -m pip download -q --no-deps --only-binary=:all: -d "$carry/pinned" \
    flax==0.12.8 optax==0.2.8 orbax-checkpoint==0.12.8 chex==0.1.92
  src=${FASHION_MNIST_DIR:-/usr/share/datasets/fashion-mnist}
  cp "$src"/*-ubyte.gz "$carry/fashion-mnist/"
  du -sh "$carry"
  exit 0
fi

[ "${1:-}" = run ] || { echo "usage: $0 prepare | run OUT_DIR [SECONDS]" >&2; exit 2; }
out=${2:?usage: $0 run OUT_DIR [SECONDS]}
budget=${3:-540}
start=$SECONDS
mkdir -p "$out"
exec > >(tee -a "$out/log.txt") 2>&1
left() { echo $((budget - (SECONDS - start))); }
stage() { echo; echo "=== $1 (at $((SECONDS - start)) s)"; }
logs=/tmp/g2g-logs runs=/tmp/g2g-runs
rm -rf "$logs" "$runs" /tmp/g2g-jax-cache-*  # a rerun on the same machine starts cold too
mkdir -p "$logs" "$runs"
finish() {
  tar -czf "$out/logs.tgz" -C /tmp g2g-logs $(cd /tmp && ls -d g2g-runs/*/metrics.jsonl 2>/dev/null) 2>/dev/null
  echo "=== end (at $((SECONDS - start)) s)"
}
trap finish EXIT

stage 'setup'
site=/tmp/g2g-site
python3 -m pip install -q --no-index --no-deps --no-compile --target "$site" "$carry"/whl/*.whl || exit 1
export PYTHONPATH="$site:$PWD" PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
versions() {
  python3 -c 'import jax, flax, optax, orbax.checkpoint as o, chex, numpy
print("jax", jax.__version__, "flax", flax.__version__, "optax", optax.__version__, "orbax", o.__version__,
      "chex", chex.__version__, "numpy", numpy.__version__, jax.devices())'
}
smoke() {
  timeout 150 python3 -m g2g_jax.main --config=configs/smoke.py --workdir="$runs/smoke$1" --config.progress=none \
    > "$logs/smoke$1.log" 2>&1
}
versions
if ! smoke 1; then
  tail -n 20 "$logs/smoke1.log"
  echo "smoke run failed with the machine's own packages: trying the pinned wheels"
  python3 -m pip install -q --no-index --no-deps --no-compile --target "$site" "$carry"/pinned/*.whl || exit 1
  versions
  smoke 2 || { tail -n 20 "$logs/smoke2.log"; echo 'smoke run failed again: stopping'; exit 1; }
fi
echo smoke ok

stage 'whole Fashion-MNIST runs, 30 epochs: the loop target'
train() {
  local name=$1 row=$2 cap=$3 t0=$SECONDS; shift 3
  timeout "$cap" python3 -m g2g_jax.main --config=configs/fashion_mnist.py"$row" --workdir="$runs/$name" \
    --config.data.dir="$carry" --config.progress=none --config.num_epochs="${G2G_EPOCHS:-30}" "$@" \
    > "$logs/$name.log" 2>&1 || echo "$name FAILED"
  echo "$name: wall $((SECONDS - t0)) s; $(grep -o 'compiled in.*' "$logs/$name.log" | head -n 1)"
}
# Each loop cold, with its own empty compilation cache (which it fills), then warm, a
# second run that reads it.
cache() { echo --jax_compilation_cache_dir=/tmp/g2g-jax-cache-$1 --jax_persistent_cache_min_compile_time_secs=0; }
train g2g_scan '' 120 --config.loop=scan $(cache scan)
train g2g_steps '' 150 --config.loop=steps $(cache steps)
train g2g_scan_warm '' 120 --config.loop=scan $(cache scan)
train g2g_steps_warm '' 150 --config.loop=steps $(cache steps)
rm -rf "$runs"/smoke*
# The loop target: the step loop's total (compile + training) over the scanned one's, cold and warm.
python3 experiments/bench/summarize_runs.py "$runs" --ratio=g2g_steps/g2g_scan --ratio=g2g_steps_warm/g2g_scan_warm

stage 'where a step goes: profile_steps.py, then with while loops and conditionals in CUDA graphs'
# XLA:GPU's default command buffers hold fusions and library calls, not control flow. The
# loop's scanned chunk has no branch since 2026-11-27; scan_cond is the old chunk, whose
# per-step lax.cond read its predicate on the host every step.
cmdbuf=--xla_gpu_enable_command_buffer=FUSION,CUBLAS,CUBLASLT,CUSTOM_CALL,CUDNN,WHILE,CONDITIONAL
timeout 100 python3 experiments/bench/profile_steps.py --chunks=4 --trace_dir=/tmp/g2g-traces \
  > "$logs/profile.txt" 2>&1 || echo 'profile_steps.py FAILED'
grep -v '^[IW][0-9]' "$logs/profile.txt"
XLA_FLAGS="$cmdbuf" timeout 80 python3 experiments/bench/profile_steps.py --chunks=4 --loops=scan,scan_cond \
  --trace_dir=/tmp/g2g-traces-cmdbuf > "$logs/profile_cmdbuf.txt" 2>&1 || echo 'profile_steps.py (cmdbuf) FAILED'
echo "--- XLA_FLAGS=$cmdbuf"
grep -v '^[IW][0-9]' "$logs/profile_cmdbuf.txt"
XLA_FLAGS="$cmdbuf" train g2g_scan_cmdbuf '' 120 --config.loop=scan
# How much of the scanned chunk's compile time is autotuning (and what the kernels lose without it).
XLA_FLAGS=--xla_gpu_autotune_level=0 train g2g_scan_autotune0 '' 120 --config.loop=scan
# The same with cuBLAS for every matmul: no Triton GEMM kernels to generate and tune.
XLA_FLAGS=--xla_gpu_enable_triton_gemm=false train g2g_scan_notriton '' 120 --config.loop=scan
python3 experiments/bench/summarize_runs.py "$runs" | grep -E '^run|g2g_scan'

stage 'bench.py'
timeout 180 python3 experiments/bench/bench.py > "$logs/bench.txt" 2>&1
grep -v '^I[0-9]' "$logs/bench.txt"
tail -n 1 "$logs/bench.txt" > "$out/bench.json"

stage 'equality tests on the GPU'
timeout 120 python3 -m pytest -q -p no:cacheprovider tests/tiles_test.py tests/train_test.py \
  -k 'equal and not resumed' 2>&1 | tail -n 25

stage "more whole runs, while time is left ($(left) s)"
[ "$(left)" -gt 150 ] && train g2g_tiles_scan '' 120 --config.loop=scan --config.connectivity.inter=tiles
[ "$(left)" -gt 170 ] && train g2g_scan_4seeds '' 150 --config.loop=scan --config.num_seeds=4
[ "$(left)" -gt 150 ] && train fc_v2_scan ':fc_v2' 120 --config.loop=scan
python3 experiments/bench/summarize_runs.py "$runs" | tee "$out/runs.txt"

stage "reproduction runs ($(left) s left)"
results=/tmp/g2g-results
mkdir -p "$results"
cp experiments/results/fashion_mnist.jsonl "$results/"
before=$(wc -l < "$results/fashion_mnist.jsonl")
export XLA_PYTHON_CLIENT_PREALLOCATE=false  # run.py gives the runs a shared compilation cache
# Start no run later than ~70 s before the budget ends (a 20-epoch run takes well under that).
stop=$(( $(left) - 70 ))
if [ "$stop" -gt 0 ]; then
  timeout $(( $(left) - 10 )) python3 experiments/reproduce/run.py dst p_sweep --dataset=fashion_mnist --seeds=3 --first_seed="${REPRO_FIRST_SEED:-0}" \
    --jobs="${REPRO_JOBS:-8}" --stop_after="$stop" --timeout=300 --results_dir="$results" \
    --work_root=/tmp/g2g-repro --set data.dir="$carry" > "$logs/reproduce.log" 2>&1
  echo "run.py exit $?"
  grep -E 'run\(s\)|final|failed|Error' "$logs/reproduce.log" | tail -n 80
fi
tail -n +$((before + 1)) "$results/fashion_mnist.jsonl" > "$out/fashion_mnist.jsonl"
echo "$(wc -l < "$out/fashion_mnist.jsonl") new reproduction result(s)"
