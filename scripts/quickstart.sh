#!/usr/bin/env bash
# Install rectnet (scripts/setup_env.sh) and train the offline quickstart (its time: wall_time_s in the run's
# results.json).
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
source "$repo/scripts/setup_env.sh"
cd "$repo"
exec "$PY" train.py experiment=quickstart "$@"
