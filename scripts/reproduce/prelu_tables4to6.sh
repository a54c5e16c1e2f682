#!/usr/bin/env bash
# He et al. 2015 (PReLU), Tables 4, 5 and 6: models A, B, C on ImageNet (A with ReLU and PReLU, B and C with PReLU),
# scale jitter [256, 512], 80 epochs (configs/experiment/prelu_{a,b,c}_*.yaml); 10-view (Table 5) and dense
# multi-scale (Tables 4 and 6) tests of the final models.
#
#   scripts/reproduce/prelu_tables4to6.sh [--dry-run] [--sweep-dir DIR] [OVERRIDE ...]
#
# Runs, all into one sweep directory (default sweeps/prelu_tables4to6): the 4 models of the tables x SEEDS (default
# 0), plus B and C with ReLU when EXTRA_ROWS=1 (no paper numbers: under "Other runs"); then, for each finished run,
#   python eval.py run_dir=<run> eval.protocol=ten_view                                  Table 5
#   python eval.py run_dir=<run> eval.protocol=dense eval.scales=[256,384,480]           Table 6, Table 4 multi-scale
# and for model A each single scale of Table 4 (eval.scales=[256], [384], [480], which eval.py writes to
# eval_dense_s<scale>.json); then python -m rectnet.tables <sweep dir>.
# ImageNet in ImageFolder layout under dataset.root. Environment (LAUNCHER=slurm, GPUS=8 keeps the mini-batch 128
# as 8 x 16, EVAL_CMD, DRY_RUN, ...): common.sh. Safe to re-run: finished runs are skipped, interrupted ones resume.
#
#   scripts/reproduce/prelu_tables4to6.sh --dry-run dataset.root=/data/imagenet
#   LAUNCHER=slurm GPUS=8 scripts/reproduce/prelu_tables4to6.sh dataset.root=/data/imagenet hydra.launcher.partition=gpu
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
reproduce_setup prelu_tables4to6 "$@"

models=prelu_a_relu,prelu_a_prelu,prelu_b_prelu,prelu_c_prelu
[[ ${EXTRA_ROWS:-0} == 1 ]] && models+=,prelu_b_relu,prelu_c_relu
seeds=seed=${SEEDS:-0}
train_grid "experiment=$models" "$seeds"
evaluate ten_view -- "experiment=$models" "$seeds"
evaluate dense "eval.scales=[256,384,480]" -- "experiment=$models" "$seeds"
for scale in 256 384 480; do
    evaluate dense "s$scale" "eval.scales=[$scale]" -- experiment=prelu_a_relu,prelu_a_prelu "$seeds"
done
tables
finish
