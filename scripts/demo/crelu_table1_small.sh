#!/usr/bin/env bash
# Shang et al. 2016 Table 1 (ConvPool-CNN-C on CIFAR-10) in miniature, on a CPU: the pinned recipes
# (experiment=convpool_*) at a reduced width, on the first NUM_TRAIN training images, for EPOCHS epochs, SEEDS
# seeds; then learning curves and final errors (python -m rectnet.analysis.curves) into OUT/report.
#
#   DATA=data bash scripts/demo/crelu_table1_small.sh            # real CIFAR-10 under data/cifar-10-batches-py
#
# Every run keeps its recipe (lr 0.01, momentum 0.9, wd 1e-3, dropout 0.2/0.5, flips, batch 128) and changes
# only the budget: width (CReLU-half at half of it, double at twice it), data, epochs and test images. The
# "double" row is the costliest (4x the baseline's work) and runs with the first seed only unless DOUBLE_SEEDS
# says otherwise. EXTRA adds train.py overrides to every run (e.g. EXTRA="trainer.precision=fp32"). Finished runs
# are skipped when the script is run again.
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
PY="${PY:-$repo/.venv/bin/python}"
DATA="${DATA:-data}"
OUT="${OUT:-runs/crelu_table1_small}"
SEEDS="${SEEDS:-0 1 2}"
DOUBLE_SEEDS="${DOUBLE_SEEDS:-0}"
WIDTH="${WIDTH:-0.25}"
EPOCHS="${EPOCHS:-3}"
NUM_TRAIN="${NUM_TRAIN:-10000}"
NUM_TEST="${NUM_TEST:-2000}"
THREADS="${THREADS:-2}"
read -r -a EXTRA_ARGS <<< "${EXTRA:-}"

scaled() { "$PY" -c "print($WIDTH * $1)"; }

train() {  # train <variant> <width> <seed>
    local dir="$OUT/$1_w$2_s$3"
    if [ -f "$dir/results.json" ]; then echo "done: $dir"; return; fi
    echo "run: $dir"
    "$PY" "$repo/train.py" "experiment=convpool_$1" "model.width=$2" "seed=$3" \
        "dataset.root=$DATA" "dataset.num_train=$NUM_TRAIN" "dataset.num_test=$NUM_TEST" \
        "trainer.epochs=$EPOCHS" "trainer.threads=$THREADS" "trainer.progress=lines" \
        "hydra.run.dir=$dir" ${EXTRA_ARGS[@]+"${EXTRA_ARGS[@]}"} > /dev/null
}

for seed in $SEEDS; do
    train baseline "$WIDTH" "$seed"
    train avr "$WIDTH" "$seed"
    train crelu "$WIDTH" "$seed"
    train crelu_half "$(scaled 0.5)" "$seed"
done
for seed in $DOUBLE_SEEDS; do
    train double "$(scaled 2)" "$seed"
done
"$PY" -m rectnet.analysis.curves "$OUT" --out "$OUT/report"
"$PY" -m rectnet.analysis.curves "$OUT" --metric train/loss --out "$OUT/report_loss"
