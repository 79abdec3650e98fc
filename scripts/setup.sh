#!/usr/bin/env bash
# Installs everything the demo and the tests need on a fresh Debian machine: mosquitto (the real broker the
# demo and the tests start on a loopback port) and this project with its dev extras and the CPU torch wheel.
set -euo pipefail
cd "$(dirname "$0")/.."

SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
if ! command -v mosquitto >/dev/null 2>&1 && [ ! -x /usr/sbin/mosquitto ]; then
    echo "installing mosquitto (Debian package)..." >&2
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq mosquitto mosquitto-clients >/dev/null
fi

PY=${PYTHON:-python3}
# torch==2.13.0 is the CPU wheel this kind of machine holds locally; a bare "torch" would fetch a CUDA build.
echo "installing edge-anomaly[dev] and torch==2.13.0 (CPU)..." >&2
$PY -m pip install -q --disable-pip-version-check torch==2.13.0 -e '.[dev]'

# Eclipse Tahu's JavaScript sparkplug-payload decodes every Sparkplug message in the tests (an independent
# implementation); pinned by tests/node/package-lock.json. Without node the Sparkplug tests skip and say so.
if command -v npm >/dev/null 2>&1; then
    echo "installing tests/node (sparkplug-payload, test-only)..." >&2
    npm ci --silent --no-audit --no-fund --prefix tests/node >/dev/null
else
    echo "node/npm not found: the Sparkplug B tests will be skipped (apt-get install nodejs npm)" >&2
fi
