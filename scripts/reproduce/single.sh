#!/usr/bin/env bash
# The CReLU paper's "Single" protocol (Shang et al. 2016 §3.1, after Goodfellow et al. 2013):
#   stage 1: train on all folds but one, record the training loss (eval mode, whole training split) at the
#            epoch of the best held-out error;
#   stage 2: retrain from scratch on the whole training split until the held-out fold's loss reaches it.
#
#   bash scripts/reproduce/single.sh <out dir> [train.py overrides ...]
#   bash scripts/reproduce/single.sh sweeps/single/crelu_s0 experiment=convpool_crelu seed=0 dataset.root=data
#
# Writes <out dir>/stage1 and <out dir>/stage2 (python -m rectnet.tables reads stage 2 as "Single").
# Safe to re-run: each stage resumes from its checkpoint, a finished stage is not retrained.
# SINGLE_FOLDS (default 5: 10,000 of CIFAR's 50,000 images held out) sets the held-out share; the paper
# does not give the size of its held-out set.
set -euo pipefail
if [[ $# -lt 1 || "$1" == -* ]]; then
    sed -n '2,15p' "$0"
    exit 2
fi
out=$1
shift
here=$(cd "$(dirname "$0")/../.." && pwd)
python=${PYTHON:-python}
folds=${SINGLE_FOLDS:-5}
holdout=(dataset.num_folds="$folds" dataset.fold=0)

"$python" "$here/train.py" "$@" "${holdout[@]}" trainer.record_train_loss_at_best=true hydra.run.dir="$out/stage1"
target=$("$python" -c 'import json, sys; print(json.load(open(sys.argv[1]))["train_loss_at_best"])' "$out/stage1/results.json")
echo "single.sh: stage 1 done; retraining on every fold until the held-out loss <= $target"
"$python" "$here/train.py" "$@" "${holdout[@]}" dataset.holdout_in_train=true trainer.stop_at_val_loss="$target" \
    hydra.run.dir="$out/stage2"
