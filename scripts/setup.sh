#!/usr/bin/env bash
# Installs everything the demo and the tests need on a fresh Debian machine: mosquitto (the real broker the
# demo and the tests start on a loopback port) and this project with its dev extras and the CPU torch wheel,
# into the project's own virtual environment .venv (created here; the system Python is left alone).
#
#   PYTHON=/path/to/python bash scripts/setup.sh   installs into that interpreter instead of .venv
#
# demo.sh and test.sh run it first and then use .venv/bin/python (or $PYTHON). A second run skips pip when
# pyproject.toml has not changed since the last successful install (.venv/.edge-anomaly-installed).
set -euo pipefail
cd "$(dirname "$0")/.."

# shellcheck source=scripts/lib/apt.sh
. scripts/lib/apt.sh  # apt_get: waits (with a message) while another apt/dpkg holds the lock
# shellcheck source=scripts/lib/path_hint.sh
. scripts/lib/path_hint.sh  # path_hint: the line that puts the commands on PATH

if ! command -v mosquitto >/dev/null 2>&1 && [ ! -x /usr/sbin/mosquitto ]; then
    echo "setup: installing mosquitto (Debian package)..." >&2
    apt_get update -qq
    apt_get install -y -qq mosquitto mosquitto-clients >/dev/null
fi
if [ ! -x /usr/bin/chromium ] || [ ! -x /usr/bin/chromedriver ]; then  # the live view's browser test
    echo "setup: installing chromium and chromium-driver (Debian packages)..." >&2
    { apt_get update -qq && apt_get install -y -qq chromium chromium-driver >/dev/null; } || echo "setup: no chromium: its test skips" >&2
fi
if [ ! -x /usr/bin/firefox-esr ]; then  # the same browser test in Firefox (driven over its own WebDriver BiDi)
    echo "setup: installing firefox-esr (Debian package)..." >&2
    { apt_get update -qq && apt_get install -y -qq firefox-esr >/dev/null; } || echo "setup: no firefox-esr: its test skips" >&2
fi

if [ -n "${PYTHON:-}" ]; then
    PY=$PYTHON
    STAMP=""
else
    if [ ! -x .venv/bin/python ]; then
        echo "setup: creating the project virtual environment .venv..." >&2
        if ! python3 -m venv .venv 2>/dev/null; then
            rm -rf .venv
            echo "setup: python3 cannot make a virtual environment here; installing python3-venv..." >&2
            apt_get update -qq
            apt_get install -y -qq python3-venv >/dev/null
            python3 -m venv .venv
        fi
    fi
    PY=.venv/bin/python
    STAMP=.venv/.edge-anomaly-installed
fi

want=$(sha256sum pyproject.toml | cut -d' ' -f1)
# torch==2.13.0 is the CPU wheel this kind of machine holds locally; a bare "torch" would fetch a CUDA build.
if [ -n "$STAMP" ] && [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$want" ]; then
    echo "setup: .venv is up to date (pyproject.toml unchanged since the last install)" >&2
else
    echo "setup: installing edge-anomaly[dev] and torch==2.13.0 (CPU) into $PY (a few minutes the first time)..." >&2
    "$PY" -m pip install -q --disable-pip-version-check torch==2.13.0 -e '.[dev]'
    if [ -n "$STAMP" ]; then echo "$want" >"$STAMP"; fi
fi

# Eclipse Tahu's JavaScript sparkplug-payload decodes every Sparkplug message in the tests (an independent
# implementation); pinned by tests/node/package-lock.json. Without node the Sparkplug tests skip and say so.
if command -v npm >/dev/null 2>&1; then
    echo "setup: installing tests/node (sparkplug-payload, node-opcua; test-only)..." >&2
    npm ci --silent --no-audit --no-fund --prefix tests/node >/dev/null
else
    echo "setup: node/npm not found: the Sparkplug B and OPC UA client tests will be skipped (apt-get install nodejs npm)" >&2
fi

# The commands (edge-train, edge-run, ...) live in the environment's bin folder, not on PATH: say how.
echo "setup: done. To put edge-train, edge-run and the other commands on PATH in this shell, run:" >&2
echo "    $(path_hint "$PY" "${STAMP:+.venv}")" >&2
