#!/usr/bin/env bash
# The GPU measurements still owed, as few device calls as possible.
# Usage (through the device tool, with the datasets copied to .data/ and carried):
#   bash benchmarks/gpu_session.sh perf "$OUT"       # ~5 min: epoch times, FF vs backprop, sweep
#   bash benchmarks/gpu_session.sh accuracy "$OUT"   # ~9 min: the MNIST / Fashion-MNIST results
#   bash benchmarks/gpu_session.sh conv "$OUT"       # <= 7 min: conv FF screens (issue 17)
#   bash benchmarks/gpu_session.sh conv-screens "$OUT"  # ~8 min: conv screens (+3 min with FFJAX_GPU_TEST=1)
#   bash benchmarks/gpu_session.sh fashion-conv-dropout "$OUT"  # <= 8 min: 3-seed screens (issue 17)
#   bash benchmarks/gpu_session.sh unsupervised-test "$OUT"  # <= 4 min: fan-in test runs (issue 20)
#   bash benchmarks/gpu_session.sh unsupervised "$OUT"  # <= 10 min: 4 x 2000 without labels (issue 20)
# Every record lands in $OUT (copy it into benchmarks/results/ afterwards).
# FFJAX_GPU_EXTRA="--epochs 1 --hidden 16 16 --train-size 12000" appends flags to every
# run of the unsupervised mode (a smoke test of the script on a CPU).
set -euo pipefail
mode=${1:?perf or accuracy}
out=${2:?output folder}
data=${FFJAX_DATA_DIR:-.data}
mkdir -p "$out/runs"
read -r -a extra <<< "${FFJAX_GPU_EXTRA:-}"
export PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv > "$out/gpu.txt" || true

# best_lever PREFIX KEY[/SUBKEY] NAME:FLAGS...: prints the NAME:FLAGS whose run
# $out/runs/<PREFIX><NAME>-val has the highest results.json figure KEY (or KEY's SUBKEY),
# and writes every lever's figure to $out/validation.txt; prints nothing when no lever
# finished (a run stopped by --time-limit has no results.json and is not chosen).
best_lever() {
  python -c '
import json, pathlib, sys
runs, prefix, key, scores = pathlib.Path(sys.argv[1]), sys.argv[2], sys.argv[3], {}
for lever in sys.argv[4:]:
    r = runs / (prefix + lever.split(":")[0] + "-val") / "results.json"
    if r.exists():
        v = json.loads(r.read_text())
        for k in key.split("/"):
            v = v[k]
        scores[lever] = v
        print("%16s  %s %.2f %%" % (lever.split(":")[0], key, 100 * v), file=sys.stderr)
print(max(scores, key=scores.get) if scores else "")
' "$out/runs" "$@" 2> >(tee "$out/validation.txt" >&2)
}

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
  # of both datasets, one seed, 20 epochs; then on MNIST at the temperature the 3-conv
  # screens chose (T 1). --time-limit stops a run with a checkpoint, which can continue
  # with --resume on the same machine; archive $OUT without checkpoints/ to bring the
  # records back (they exceed the device tool's per-file limit).
  limit=${FFJAX_GPU_CONV_LIMIT:-110s}
  for run in "mnist:" "fashion_mnist:" "mnist:--temperature 1"; do
    ds=${run%%:*}; read -r -a flags <<< "${run#*:}"
    name=$ds-cifar10-conv-20ep-val; [ ${#flags[@]} -eq 0 ] || name=$name-T1
    python -m experiments.mnist --preset cifar10-conv --dataset $ds --data-dir "$data" \
        --epochs 20 --validation-size 10000 --eval-every 2 --time-limit "$limit" \
        "${flags[@]}" "${extra[@]}" --out-dir "$out/runs/$name" || true
  done
  ;;
conv-screens)
  # 50-epoch screens of the published geometry (--preset cifar10-conv), validation split,
  # one seed, one run at a time (four side by side were slower in total: docs/blocks.md),
  # the preset itself as the same-session baseline:
  # - bn: every layer's output batch-normalized per channel (--output-norm batch), the
  #   published network's one ingredient ffjax lacked until 2026-12-04; on the CPU's
  #   3-conv network at 5 epochs it raised the class-group readout from 96.54 to 98.37 %
  #   and the softmax readout from 98.58 to 99.03 % (docs/blocks.md);
  # - bn-t1: the same at T 1 (the 3-conv preset's temperature; with batch-normalized
  #   outputs the group mean squares are near 1, so T 0.05 makes sharp logits);
  # - published: the second and fourth layers grouped (conv:C:K:g10) as the published
  #   network groups them, with its settings: batch norm, T 1, Adam lr 0.01, batch 128,
  #   and its interleaved layer training (on MNIST the layers train for the first 2, 3,
  #   4, 5 of 20 epochs, on Fashion-MNIST 10, 15, 19, 23 of 50). Grouping cost the CPU's
  #   3-conv network 0.3-6 % at 5 epochs, with and without batch norm, so this checks
  #   the published layout rather than a likely gain.
  # About 8 minutes. FFJAX_GPU_TEST=1 then trains the best of each dataset on all 60 000
  # images (2 seeds) and scores the test set once: about 3 minutes more, which no longer
  # fits one device call, so give it a call of its own with the screens' winners.
  g24="conv:20:3 conv:80:3:p2:g10 conv:240:3 conv:480:3:p2:g10"
  for ds in mnist fashion_mnist; do
    if [ $ds = mnist ]; then ilt="--epochs 20 --schedule interleaved:2,3,4,5"
    else ilt="--epochs 50 --schedule interleaved:10,15,19,23"; fi
    screens=("preset:" "bn:--output-norm batch" "bn-t1:--output-norm batch --temperature 1"
             "published:--hidden $g24 --output-norm batch --temperature 1 --lr 0.01 --batch-size 128 $ilt")
    for sc in "${screens[@]}"; do
      name=${sc%%:*}; read -r -a flags <<< "${sc#*:}"
      python -m experiments.mnist --preset cifar10-conv --dataset $ds --data-dir "$data" \
          --epochs 50 --validation-size 10000 --eval-every 10 "${flags[@]}" \
          --time-limit "${FFJAX_GPU_CONV_LIMIT:-100s}" "${extra[@]}" \
          --out-dir "$out/runs/$ds-conv-$name-val" || true
    done
    best=$(python -c '
import json, pathlib, sys
scores = {}
for r in pathlib.Path(sys.argv[1]).glob(sys.argv[2] + "-conv-*-val/results.json"):
    d = json.loads(r.read_text())
    name = r.parent.name[len(sys.argv[2]) + len("-conv-"):-len("-val")]
    scores[name] = max(d["validation_accuracy"], d["validation_accuracy_softmax"])
    print("%s %-8s validation %.2f %%, softmax %.2f %%" % (sys.argv[2], name,
          100 * d["validation_accuracy"], 100 * d["validation_accuracy_softmax"]), file=sys.stderr)
print(max(scores, key=scores.get) if scores else "")
' "$out/runs" $ds 2> >(tee -a "$out/validation.txt" >&2))
    [ -n "$best" ] && [ "${FFJAX_GPU_TEST:-0}" = 1 ] || continue
    for sc in "${screens[@]}"; do [ "${sc%%:*}" = "$best" ] && read -r -a flags <<< "${sc#*:}"; done
    echo "$ds: chosen on validation $best" | tee -a "$out/chosen.txt"
    python -m experiments.mnist --preset cifar10-conv --dataset $ds --data-dir "$data" \
        --epochs 50 --seeds 2 --eval-every 10 "${flags[@]}" "${extra[@]}" \
        --out-dir "$out/runs/$ds-conv-$best-test" || true
  done
  ;;
unsupervised-test)
  # The test runs of the setting the 4 x 2000 validation runs chose on a CPU (fan-in lr
  # scaling, ahead of the reference on both validation seeds): all 60 000 training
  # images, 3 seeds, scored on the test set. True float32 matmuls (no TF32), the
  # arithmetic the CPU runs that chose it used.
  JAX_DEFAULT_MATMUL_PRECISION=highest python -m experiments.mnist \
      --preset hinton-unsupervised --lr-scaling fan_in --data-dir "$data" --seeds 3 \
      --time-limit "${FFJAX_GPU_UNSUP_LIMIT:-170s}" --checkpoint-every 0 "${extra[@]}" \
      --out-dir "$out/runs/unsup-fanin-full60k-test" || true
  ;;
unsupervised)
  # The fully connected target of issue 20 (<= 1.30 % MNIST test error; 4 x 2000, 100
  # epochs; 1.42 % so far). One such run takes 85 minutes on 2 CPU cores, so the levers
  # the 784-1000-1000 screens found were not all tried at full size. Here each runs on
  # the validation split with 2 seeds, most promising first; the best mean validation
  # accuracy is then trained on all 60 000 images with 3 seeds and scored on the test
  # set once. A lever stopped by --time-limit has no results.json and is not chosen.
  common=(--preset hinton-unsupervised --data-dir "$data" --eval-every 0)
  # Batch size 50 trailed the reference by 1.5-3.2 % on 4 x 2000 (CPU, 24 epochs), and the
  # lr decay from the first quarter and a soft threshold (--temperature 100 --loss-scale
  # 50) ended 0.13-0.19 % below both reference seeds there (CPU, 100 epochs), and larger
  # mask regions (blur 3) 0.03-0.06 % below, and weight decay 0.003 level over two seeds
  # (98.55 against 98.53 %, CPU, 100 epochs), so they are out, and so are fan-in lr
  # scaling (ahead on both validation seeds, level with the reference on the test set:
  # 1.43 +- 0.04 %) and the hardest of 4 hybrids (2.5 times the reference's step cost;
  # its one CPU run at this size ended 0.08-0.11 % below the reference seeds), and the lr
  # decay over the whole run (the decay from the first quarter lost at this size). Hidden
  # dropout is in: these layers fit their training images far more than held-out ones
  # (docs/unsupervised.md), and 0.2 led both reference seeds on one CPU validation seed
  # (98.58 against 98.51 / 98.54 %). So is dropout 0.2 with fan-in scaling and weight
  # decay 0.003 together: each of the three lifted the probes of layers 2-4 on the CPU
  # by 0.1-0.3 %, each by a mechanism of its own, and none alone is enough. Input noise
  # and centered normalization, level with or below the reference there, are out.
  levers=("reference:" "drop01:--hidden-dropout 0.1" "drop02:--hidden-dropout 0.2"
          "drop02-fanin-wd003:--hidden-dropout 0.2 --lr-scaling fan_in --weight-decay 0.003")
  for lever in "${levers[@]}"; do
    name=${lever%%:*}; read -r -a flags <<< "${lever#*:}"
    python -m experiments.mnist "${common[@]}" "${flags[@]}" --seeds 2 \
        --validation-size 10000 --time-limit 2m "${extra[@]}" \
        --out-dir "$out/runs/unsup-$name-val" || true
  done
  best=$(best_lever unsup- validation_accuracy_softmax "${levers[@]}")
  [ -n "$best" ] || { echo "no lever finished on validation" >&2; exit 1; }
  name=${best%%:*}; read -r -a flags <<< "${best#*:}"
  echo "chosen on validation: $name (${best#*:})" | tee "$out/chosen.txt"
  python -m experiments.mnist "${common[@]}" "${flags[@]}" --seeds 3 "${extra[@]}" \
      --out-dir "$out/runs/unsup-$name-full60k-test"
  ;;
fashion-conv-dropout)
  # Issue 17's open target (Fashion-MNIST conv test accuracy >= 92.5 %). Two validation
  # seeds of one setting differ by about as much as the levers do (docs/blocks.md, "The
  # joint readout"), too much to choose the hidden dropout rate or the length on one CPU
  # seed; here each lever runs with 3 seeds in one program on the validation split,
  # scored by the chosen readout (the joint readout of
  # all but the first layer and the softmax readout). FFJAX_GPU_TEST=1 then trains the
  # best mean on all 60 000 images (3 seeds) and scores the test set once. A lever
  # stopped by --time-limit has no results.json and is not chosen.
  common=(--preset fashion-conv --data-dir "$data" --eval-every 0)
  # Post-hoc changes of the readout and of the batch-norm statistics leave the chosen
  # readout where it was (docs/blocks.md, "Is the readout or the batch norm the limit?"),
  # so the levers change the layers: the runner-up rate, half the batch (which led
  # early without dropout), and twice the channels (level with 1.5 times without
  # dropout, which may have kept the wider layers from paying). A class-group dense
  # layer on top ended level over three CPU seeds, so it is not repeated here.
  levers=("drop01:--hidden-dropout 0.1" "drop015:--hidden-dropout 0.15"
          "drop01-b50:--hidden-dropout 0.1 --batch-size 50"
          "drop01-wide2:--hidden-dropout 0.1 --hidden conv:40:5:p2 conv:160:3:p2 conv:320:3:p2 conv:640:3")
  for lever in "${levers[@]}"; do
    name=${lever%%:*}; read -r -a flags <<< "${lever#*:}"
    python -m experiments.fashion_mnist "${common[@]}" "${flags[@]}" --seeds 3 \
        --validation-size 10000 --time-limit "${FFJAX_GPU_CONV_LIMIT:-100s}" "${extra[@]}" \
        --out-dir "$out/runs/fashion-conv-$name-val" || true
  done
  best=$(best_lever fashion-conv- validation_accuracy_joint_by_score_layers/all_but_first \
      "${levers[@]}")
  [ -n "$best" ] && [ "${FFJAX_GPU_TEST:-0}" = 1 ] || exit 0
  name=${best%%:*}; read -r -a flags <<< "${best#*:}"
  echo "chosen on validation: $name (${best#*:})" | tee "$out/chosen.txt"
  python -m experiments.fashion_mnist "${common[@]}" "${flags[@]}" --seeds 3 "${extra[@]}" \
      --out-dir "$out/runs/fashion-conv-$name-test"
  ;;
*) echo "unknown mode $mode (perf, accuracy, conv, conv-screens, fashion-conv-dropout, unsupervised or unsupervised-test)" >&2; exit 2 ;;
esac
