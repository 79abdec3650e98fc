#!/usr/bin/env bash
# The main job end to end on this machine: local broker, small trained bundle, sample video, edge-run,
# MQTT results printed as they arrive, overlay images in demo-out/overlays. Finishes by itself.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec "${PYTHON:-python3}" -m benchmarks.demo "$@"
