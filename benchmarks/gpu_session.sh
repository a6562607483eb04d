#!/usr/bin/env bash
# The GPU measurements still owed (issues 2-5), as few device calls as possible.
# Usage (through the device tool, with the datasets copied to .data/ and carried):
#   bash benchmarks/gpu_session.sh perf "$OUT"       # ~5 min: epoch times, FF vs backprop, sweep
#   bash benchmarks/gpu_session.sh accuracy "$OUT"   # ~9 min: the MNIST / Fashion-MNIST results
# Every record lands in $OUT (copy it into benchmarks/results/ afterwards).
set -euo pipefail
mode=${1:?perf or accuracy}
out=${2:?output folder}
data=${FFJAX_DATA_DIR:-.data}
mkdir -p "$out/runs"
export PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv > "$out/gpu.txt" || true

case "$mode" in
perf)
  python -m benchmarks.epoch_time --configs 784-500-500 784-1000-1000-1000 784-2000-2000-2000-2000 \
      --repeats 10 --out "$out/epoch.json"
  python -m benchmarks.compare --data-dir "$data" --out-dir "$out" --overwrite
  python -m benchmarks.sweep_throughput --data-dir "$data" --hidden 1000 1000 1000 \
      --models 16 --epochs 2 --out "$out/sweep.json"
  ;;
accuracy)
  m=experiments.mnist f=experiments.fashion_mnist
  common=(--data-dir "$data" --seeds 3 --eval-every 10)
  # Validation first (last 10k of the training set), then the test runs.
  python -m $m "${common[@]}" --validation-size 10000 --out-dir "$out/runs/mnist-4x2000-val"
  python -m $m "${common[@]}" --out-dir "$out/runs/mnist-4x2000"
  python -m $m "${common[@]}" --preset hinton --out-dir "$out/runs/mnist-hinton"
  python -m $f "${common[@]}" --validation-size 10000 --out-dir "$out/runs/fashion-4x2000-val"
  python -m $f "${common[@]}" --out-dir "$out/runs/fashion-4x2000"
  python -m $m "${common[@]}" --hidden 1000 1000 1000 --epochs 30 --schedule greedy \
      --validation-size 10000 --out-dir "$out/runs/mnist-3x1000-greedy-val"
  python -m $m "${common[@]}" --hidden 1000 1000 1000 --epochs 30 \
      --validation-size 10000 --out-dir "$out/runs/mnist-3x1000-simultaneous-val"
  ;;
*) echo "unknown mode $mode (perf or accuracy)" >&2; exit 2 ;;
esac
