#!/usr/bin/env bash
# Install rectnet (scripts/setup_env.sh) and run the whole test suite; extra arguments go to pytest.
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
source "$repo/scripts/setup_env.sh"
cd "$repo"
exec "$PY" -m pytest -q "$@"
