#!/usr/bin/env bash
# Shang et al. 2016 (CReLU), Table 1: ConvPool-CNN-C baseline, + (double), AVR, CReLU, + (half) on CIFAR-10 and
# CIFAR-100 (configs/experiment/convpool_*.yaml: 350 epochs each).
#
#   scripts/reproduce/crelu_table1.sh [--dry-run] [--sweep-dir DIR] [OVERRIDE ...]
#
# Runs, all into one sweep directory (default sweeps/crelu_table1):
#   "Single": 6 models (Table 1's five and PReLU, He et al. 2015's claim carried to this net:
#   configs/experiment/convpool_prelu.yaml) x {cifar10, cifar100} x SEEDS (default 0,1,2), on the whole training split;
#   (SINGLE=1: the paper's two-stage protocol instead, scripts/reproduce/single.sh per run: common.sh single_protocol);
#   "Average" / "Vote": 6 models x {cifar10, cifar100} x FOLD_SEEDS (default 0) x 10 folds (dataset.num_folds=10,
#   dataset.fold=FOLDS, default 0..9; FOLDS= skips them): each fold net trains on the other nine folds;
# then python -m rectnet.tables <sweep dir> --out <sweep dir>/tables.
# CIFAR comes from dataset.root (add dataset.download=true once on a machine that is online). Environment
# (LAUNCHER=slurm, GPUS, DRY_RUN, ...): scripts/reproduce/common.sh. Safe to re-run: finished runs are skipped,
# interrupted ones resume from their last checkpoint.
#
#   scripts/reproduce/crelu_table1.sh --dry-run
#   LAUNCHER=slurm scripts/reproduce/crelu_table1.sh dataset.root=/data/cifar hydra.launcher.partition=gpu
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
reproduce_setup crelu_table1 "$@"

cifar_table convpool_baseline,convpool_double,convpool_avr,convpool_crelu,convpool_crelu_half,convpool_prelu
finish
