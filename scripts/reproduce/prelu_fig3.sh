#!/usr/bin/env bash
# He et al. 2015 (PReLU), Fig. 3: the 30-layer plain net with ReLU, init "ours" (converges) vs Xavier ("completely
# stalls"): error on 3,000 validation images (centre crop) after every epoch, 9 epochs
# (configs/experiment/fig3_plain30_*.yaml). A reduced CIFAR-10 version for a CPU: scripts/demo/fig3_small.py.
#
#   scripts/reproduce/prelu_fig3.sh [--dry-run] [--sweep-dir DIR] [OVERRIDE ...]
#
# Runs, all into one sweep directory (default sweeps/prelu_fig3): 2 inits x SEEDS (default 0); then
# python -m rectnet.analysis.curves <sweep dir> --out <sweep dir>/curves (the figure, with each run's chance level)
# and python -m rectnet.tables <sweep dir> (these runs appear under "Other runs").
# ImageNet in ImageFolder layout under dataset.root. Environment (LAUNCHER=slurm, GPUS, DRY_RUN, ...): common.sh.
# Safe to re-run: finished runs are skipped, interrupted ones resume.
#
#   scripts/reproduce/prelu_fig3.sh --dry-run dataset.root=/data/imagenet
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
reproduce_setup prelu_fig3 "$@"

train_grid experiment=fig3_plain30_kaiming,fig3_plain30_xavier "seed=${SEEDS:-0}"
show_or_run "$PYTHON" -m rectnet.analysis.curves "$SWEEP_DIR" --out "$SWEEP_DIR/curves"
tables
finish
