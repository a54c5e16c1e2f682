#!/usr/bin/env bash
# The CUDA paths on one GPU in under 5 minutes: CIFAR held on the GPU in bf16, fp16, fp32 and
# compiled; a 1-rank NCCL run under torch.cuda.set_sync_debug_mode("warn"); an ImageNet sample through
# pinned loading; eval.py under center, ten_view and dense; a resume. One JSON line per stage on stdout
# (images/s, achieved TFLOP/s against the device's peak, checks); scripts/gpu_check.py has the details.
#
#   bash scripts/gpu_check.sh [--dry-run] [--out DIR] [--cifar-root DIR]
#
# --dry-run needs no GPU: it composes and validates every stage's config, reports what the machine has
# and prints what it would run.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
python=${PYTHON:-python}
budget=${GPU_CHECK_TIMEOUT_S:-300}
cd "$here"
exec timeout "$budget" "$python" "$here/scripts/gpu_check.py" "$@"
