#!/usr/bin/env bash
# Install rectnet (scripts/setup_env.sh) and train the offline quickstart: about a minute on 2 CPU cores.
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
source "$repo/scripts/setup_env.sh"
cd "$repo"
exec "$PY" train.py experiment=quickstart "$@"
