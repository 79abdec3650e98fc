#!/usr/bin/env bash
# The main job end to end on this machine: local broker, small trained bundle, sample video, edge-run,
# MQTT results printed as they arrive, overlay images in demo-out/overlays. Finishes by itself.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh  # into the project's .venv (or $PYTHON when set)
exec "${PYTHON:-.venv/bin/python}" -m tools.demo "$@"
