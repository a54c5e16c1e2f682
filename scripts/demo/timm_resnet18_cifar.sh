#!/usr/bin/env bash
# ReLU vs PReLU vs CReLU-half vs AVR in timm's ResNet-18 (CIFAR stem, quarter width) on real CIFAR-10, on a CPU:
# model=timm with rectnet's activations and data-flow Kaiming init (docs/convert.md), one recipe for all four,
# SEEDS seeds each; then the table and curves (scripts/demo/timm_resnet18_report.py) into REPORT.
#
#   DATA=/path/to/cifar bash scripts/demo/timm_resnet18_cifar.sh     # <DATA>/cifar-10-batches-py
#
# The budget (about 35 CPU-minutes at one thread on the machine of docs/results/timm_resnet18_cifar.md): stage
# widths 16-32-64-128 (a quarter of ResNet-18's; timm keeps its 64-filter stem conv), the first NUM_TRAIN
# training images, EPOCHS epochs, NUM_TEST test images. Finished runs are skipped when the script is rerun.
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
PY="${PY:-$repo/.venv/bin/python}"
DATA="${DATA:-data}"
OUT="${OUT:-runs/timm_resnet18_cifar}"
REPORT="${REPORT:-$OUT/report}"
SEEDS="${SEEDS:-0 1 2}"
EPOCHS="${EPOCHS:-3}"
NUM_TRAIN="${NUM_TRAIN:-10000}"
NUM_TEST="${NUM_TEST:-5000}"
THREADS="${THREADS:-1}"

train() {  # train <activation> <seed>
    local dir="$OUT/$1_s$2"
    if [ -f "$dir/results.json" ]; then echo "done: $dir"; return; fi
    echo "run: $dir"
    "$PY" "$repo/train.py" model=timm model.name=resnet18 model.cifar_stem=true \
        '+model.kwargs={channels: [16, 32, 64, 128]}' "activation=$1" init=kaiming "seed=$2" \
        dataset=cifar10 "dataset.root=$DATA" "dataset.num_train=$NUM_TRAIN" "dataset.num_test=$NUM_TEST" \
        dataset.crop_padding=4 optim.lr=0.1 optim.weight_decay=5e-4 schedule=cosine \
        "trainer.epochs=$EPOCHS" trainer.batch_size=128 trainer.precision=fp32 "trainer.threads=$THREADS" \
        trainer.progress=lines "hydra.run.dir=$dir" > "$OUT/$1_s$2.log" 2>&1
}

mkdir -p "$OUT"
for seed in $SEEDS; do
    for act in relu prelu crelu avr; do
        train "$act" "$seed"
    done
done
# this checkout's rectnet, whichever one the interpreter has installed
PYTHONPATH="$repo${PYTHONPATH:+:$PYTHONPATH}" "$PY" "$repo/scripts/demo/timm_resnet18_report.py" "$OUT" --out "$REPORT"
