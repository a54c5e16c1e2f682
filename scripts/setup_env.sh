#!/usr/bin/env bash
# Create (once) the project's virtual environment and install rectnet with its test tools into it.
# Usage: source scripts/setup_env.sh      (sets $PY to the environment's python)
# RECTNET_VENV chooses where the environment lives (default: .venv in the repository).
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="${RECTNET_VENV:-$repo/.venv}"
if [ ! -x "$venv/bin/python" ]; then
    echo "rectnet: creating the virtual environment $venv" >&2
    python3 -m venv "$venv"
fi
PY="$venv/bin/python"
# Editable install with the dev extras; pip skips what is already satisfied, so re-runs take seconds.
"$PY" -m pip install --quiet --disable-pip-version-check -e "$repo[dev]" 2> >(grep -v "is ignored: it is neither" >&2)
"$PY" -c "import torch, torchvision, hydra, timm, tensorboard" || {
    echo "rectnet: the environment $venv does not import torch/torchvision/hydra/timm/tensorboard" >&2
    exit 1
}
export PY
