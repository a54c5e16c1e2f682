#!/usr/bin/env bash
# Shang et al. 2016 (CReLU), Table 2: VGG on CIFAR-10 and CIFAR-100 with CReLU at conv1 / conv1,3 / conv1,3,5 (those
# layers' filters halved) against the ReLU VGG (configs/experiment/vgg_cifar_*.yaml: 300 epochs each).
#
#   scripts/reproduce/crelu_table2.sh [--dry-run] [--sweep-dir DIR] [OVERRIDE ...]
#
# Runs, all into one sweep directory (default sweeps/crelu_table2):
#   "Single": 4 models x {cifar10, cifar100} x SEEDS (default 0,1,2), on the whole training split;
#   (SINGLE=1: the paper's two-stage protocol instead, scripts/reproduce/single.sh per run: common.sh single_protocol);
#   "Average" / "Vote": 4 models x {cifar10, cifar100} x FOLD_SEEDS (default 0) x 10 folds (dataset.num_folds=10,
#   dataset.fold=FOLDS, default 0..9; FOLDS= skips them);
# then python -m rectnet.tables <sweep dir> --out <sweep dir>/tables.
# Environment (LAUNCHER=slurm, GPUS, DRY_RUN, ...): scripts/reproduce/common.sh. Safe to re-run: finished runs
# are skipped, interrupted ones resume from their last checkpoint.
#
#   scripts/reproduce/crelu_table2.sh --dry-run
#   LAUNCHER=slurm scripts/reproduce/crelu_table2.sh dataset.root=/data/cifar hydra.launcher.partition=gpu
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
reproduce_setup crelu_table2 "$@"

cifar_table vgg_cifar_baseline,vgg_cifar_crelu1,vgg_cifar_crelu13,vgg_cifar_crelu135
finish
