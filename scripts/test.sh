#!/usr/bin/env bash
# Installs what the tests need on a fresh machine (mosquitto, the project with its dev extras, the CPU torch)
# and runs the suite. Extra arguments go to pytest, e.g. `bash scripts/test.sh -m slow`.
set -euo pipefail
cd "$(dirname "$0")/.."

SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
if ! command -v mosquitto >/dev/null 2>&1 && [ ! -x /usr/sbin/mosquitto ]; then
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq mosquitto mosquitto-clients >/dev/null
fi

PY=${PYTHON:-python3}
# torch==2.13.0 is the CPU wheel this kind of machine holds locally; a bare "torch" would fetch a CUDA build.
$PY -m pip install -q torch==2.13.0 -e '.[dev]'
$PY -m ruff check edge training export calibration benchmarks tests
exec $PY -m pytest -q -p no:cacheprovider "$@"
