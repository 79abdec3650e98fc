#!/usr/bin/env bash
# The test command (README, .ci/run): install what the tests need, lint, run the suite.
# Extra arguments go to pytest, e.g. `bash scripts/test.sh -m slow` for the long MVTec accuracy runs.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh  # into the project's .venv (or $PYTHON when set)
PY=${PYTHON:-.venv/bin/python}
$PY -m ruff check edge training export calibration benchmarks tools tests
$PY -m mypy  # edge/, configured in pyproject.toml
exec $PY -m pytest -q -p no:cacheprovider "$@"
