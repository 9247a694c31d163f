#!/usr/bin/env bash
# Sets up everything (tools/install.sh: apt packages, .venv, the project, Horovod) and runs the checks:
# ruff lint, ruff format check, then the whole pytest suite (slow and 2-rank Horovod tests included).
#   bash tools/run_tests.sh [pytest args...]
#   bash tools/run_tests.sh -m "not slow and not horovod"   # the quick tier (markers in pytest.ini)
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"
bash tools/install.sh
py="${VENV:-${VIRTUAL_ENV:-$root/.venv}}/bin/python"
"$py" -m ruff check .
"$py" -m ruff format --check .
exec "$py" -m pytest -v -p no:cacheprovider --durations=15 "$@"
