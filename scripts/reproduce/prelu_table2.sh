#!/usr/bin/env bash
# He et al. 2015 (PReLU), Table 2 and Table 1: the 14-layer model on ImageNet with ReLU, channel-shared PReLU and
# channel-wise PReLU (plus §2.2's ReLU with Xavier init), 75 epochs, shorter side 256, 10-view test; and the learned
# slopes of the PReLU runs in Table 1's layout (configs/experiment/small14_*.yaml).
#
#   scripts/reproduce/prelu_table2.sh [--dry-run] [--sweep-dir DIR] [OVERRIDE ...]
#
# Runs, all into one sweep directory (default sweeps/prelu_table2): 4 models x SEEDS (default 0); then, for each
# finished run, python eval.py run_dir=<run> eval.protocol=ten_view on the final model; python -m
# rectnet.tables <sweep dir> --out <sweep dir>/tables; and python -m rectnet.analysis.slopes <run> for each PReLU
# run (Table 1; also written to <sweep dir>/tables/slopes_<run>.txt). XAVIER=0 leaves the Xavier row out.
# ImageNet in ImageFolder layout under dataset.root. Environment (LAUNCHER=slurm, GPUS=4 keeps the mini-batch 128
# as 4 x 32, EVAL_CMD, DRY_RUN, ...): common.sh. Safe to re-run: finished runs are skipped, interrupted ones resume.
#
#   scripts/reproduce/prelu_table2.sh --dry-run dataset.root=/data/imagenet
#   LAUNCHER=slurm GPUS=4 scripts/reproduce/prelu_table2.sh dataset.root=/data/imagenet hydra.launcher.partition=gpu
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
reproduce_setup prelu_table2 "$@"

models=small14_relu,small14_prelu_shared,small14_prelu
[[ ${XAVIER:-1} == 1 ]] && models+=,small14_relu_xavier
seeds=seed=${SEEDS:-0}
train_grid "experiment=$models" "$seeds"
evaluate ten_view -- "experiment=$models" "$seeds"
tables

grid_runs experiment=small14_prelu_shared,small14_prelu "$seeds"
for run in "${GRID_OUT[@]}"; do
    if [[ $DRY_RUN == 1 ]]; then
        show_or_run "$PYTHON" -m rectnet.analysis.slopes "$run"
    else
        echo "Table 1 slopes: $run"
        "$PYTHON" -m rectnet.analysis.slopes "$run" | tee "$SWEEP_DIR/tables/slopes_$(basename "$run").txt"
    fi
done
finish
