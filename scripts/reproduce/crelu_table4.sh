#!/usr/bin/env bash
# Shang et al. 2016 (CReLU), Table 4: All-CNN-B on ImageNet, the baseline and its AVR and CReLU variants
# (configs/experiment/allcnn_b_*.yaml: 90 epochs each), tested on the centre crop and on 10 patches.
#
#   scripts/reproduce/crelu_table4.sh [--dry-run] [--sweep-dir DIR] [OVERRIDE ...]
#
# Runs, all into one sweep directory (default sweeps/crelu_table4): 9 models x SEEDS (default 0); then, for each
# finished run, python eval.py run_dir=<run> eval.protocol=center (top-1/top-5) and eval.protocol=ten_view
# (the † columns), on the final model; then python -m rectnet.tables <sweep dir> --out <sweep dir>/tables.
# ImageNet in ImageFolder layout under dataset.root (<root>/train/<wnid>/, <root>/val/<wnid>/). Environment
# (LAUNCHER=slurm, GPUS=8 keeps the global batch 128 as 8 x 16, EVAL_CMD, DRY_RUN, ...): common.sh. Safe to
# re-run: finished runs are skipped, interrupted ones resume, existing eval_*.json are kept.
#
#   scripts/reproduce/crelu_table4.sh --dry-run dataset.root=/data/imagenet
#   LAUNCHER=slurm GPUS=4 scripts/reproduce/crelu_table4.sh dataset.root=/data/imagenet hydra.launcher.partition=gpu
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
reproduce_setup crelu_table4 "$@"

grid=(
    experiment=allcnn_b_baseline,allcnn_b_avr1_4,allcnn_b_avr1_7,allcnn_b_avr1_9,allcnn_b_crelu147,allcnn_b_crelu1_4,allcnn_b_crelu1_7,allcnn_b_crelu1_9,allcnn_b_crelu_all
    "seed=${SEEDS:-0}"
)
train_grid "${grid[@]}"
evaluate center -- "${grid[@]}"
evaluate ten_view -- "${grid[@]}"
tables
finish
