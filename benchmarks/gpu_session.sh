#!/usr/bin/env bash
# The GPU measurements still owed, as few device calls as possible.
# Usage (through the device tool, with the datasets copied to .data/ and carried):
#   bash benchmarks/gpu_session.sh perf "$OUT"       # ~5 min: epoch times, FF vs backprop, sweep
#   bash benchmarks/gpu_session.sh accuracy "$OUT"   # ~9 min: the MNIST / Fashion-MNIST results
#   bash benchmarks/gpu_session.sh conv "$OUT"       # <= 9 min: conv FF screens (issue 17)
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
conv)
  # The published channel-wise competitive geometry (--preset cifar10-conv, about 200 M
  # multiply-adds per example, 20 min per epoch on 2 CPU cores) on the validation split
  # of both datasets, one seed. --time-limit stops a run with a checkpoint, so a run cut
  # short continues with --resume in the next session.
  for ds in mnist fashion_mnist; do
    python -m experiments.mnist --preset cifar10-conv --dataset $ds --data-dir "$data" \
        --epochs 30 --validation-size 10000 --eval-every 5 --time-limit 4m \
        --out-dir "$out/runs/$ds-cifar10-conv-30ep-val" || true
  done
  ;;
*) echo "unknown mode $mode (perf, accuracy or conv)" >&2; exit 2 ;;
esac
