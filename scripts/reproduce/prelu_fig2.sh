#!/usr/bin/env bash
# He et al. 2015 (PReLU), Fig. 2: the 22-layer model B with ReLU, init "ours" (Eq. 14) vs Xavier: top-1 error on
# 3,000 validation images (centre crop) after every epoch, 3 epochs (configs/experiment/fig2_b_*.yaml).
#
#   scripts/reproduce/prelu_fig2.sh [--dry-run] [--sweep-dir DIR] [OVERRIDE ...]
#
# Runs, all into one sweep directory (default sweeps/prelu_fig2): 2 inits x SEEDS (default 0); then
# python -m rectnet.analysis.curves <sweep dir> --out <sweep dir>/curves (the figure: error per epoch, run beside
# run) and python -m rectnet.tables <sweep dir> (these runs appear under "Other runs").
# ImageNet in ImageFolder layout under dataset.root. Environment (LAUNCHER=slurm, GPUS, DRY_RUN, ...): common.sh.
# Safe to re-run: finished runs are skipped, interrupted ones resume.
#
#   scripts/reproduce/prelu_fig2.sh --dry-run dataset.root=/data/imagenet
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
reproduce_setup prelu_fig2 "$@"

train_grid experiment=fig2_b_kaiming,fig2_b_xavier "seed=${SEEDS:-0}"
show_or_run "$PYTHON" -m rectnet.analysis.curves "$SWEEP_DIR" --out "$SWEEP_DIR/curves"
tables
finish
