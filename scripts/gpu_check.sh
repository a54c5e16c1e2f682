#!/usr/bin/env bash
# The CUDA and cluster paths on one GPU node in under 9 minutes (budget below): CIFAR held on the GPU in bf16,
# fp16, fp32 and compiled; host syncs of a 1-rank NCCL run; then `torchrun --nproc_per_node=N` over every GPU
# against 1 process (the same weights), ImageNet through workers under NCCL and eval.py's protocols, a NaN on N
# ranks, SIGUSR1 to the last rank and the resume on 1 process, DDP under torch.compile from a cold cache. One
# JSON line per stage on stdout ("ok", the figures beside their thresholds, wall time); exit status 1 when a
# stage failed. scripts/checks/gpu_check.py has the stages, thresholds and options.
#
#   bash scripts/gpu_check.sh [--dry-run] [--cpu-standin] [--out DIR] [--cifar-root DIR] [--gpus N]
#
# --dry-run needs no GPU: it composes and validates every stage's config for N processes and prints the
# commands it would run. --cpu-standin runs the multi-process stages with gloo on the CPU, tiny (~2 minutes).
# GPU_CHECK_TIMEOUT_S (540): no stage starts after it; the check is killed 30 s later (a stage that hangs).
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
if [[ -z "${PYTHON:-}" && -x "$here/.venv/bin/python" ]]; then
    PYTHON="$here/.venv/bin/python"  # the project's environment, where it has one
fi
python=${PYTHON:-python}
budget=${GPU_CHECK_TIMEOUT_S:-540}
cd "$here"
exec timeout --kill-after=10 "$((budget + 30))" "$python" "$here/scripts/checks/gpu_check.py" --budget-s "$budget" "$@"
