#!/bin/sh
# The Dockerfile's install step, kept here so that tests/serving/test_deploy.py can run it without a Docker
# engine: a fresh virtual environment at VENV with modelmill from SRC (a source tree or a built wheel) and
# the extras a serving pod needs, pinned by SRC's constraints.txt.
#   deploy/docker/install.sh VENV [SRC] [EXTRAS]
# The extras are `serving` (gRPC), `redis` (online store, shared cache) and `postgres` (metadata); torch,
# LightGBM, ONNX and Ray are not installed: add their extras (and memory) for models of those flavours.
set -eu
VENV=${1:?usage: install.sh VENV [SRC] [EXTRAS]}
SRC=${2:-.}
EXTRAS=${3:-serving,redis,postgres}
PYTHON=${PYTHON:-python3}
CONSTRAINTS=${CONSTRAINTS:-}
if [ -z "$CONSTRAINTS" ] && [ -d "$SRC" ] && [ -f "$SRC/constraints.txt" ]; then CONSTRAINTS="$SRC/constraints.txt"; fi
"$PYTHON" -m venv "$VENV"
if [ -n "$CONSTRAINTS" ]; then
  "$VENV/bin/python" -m pip install --disable-pip-version-check --constraint "$CONSTRAINTS" "$SRC[$EXTRAS]"
else
  "$VENV/bin/python" -m pip install --disable-pip-version-check "$SRC[$EXTRAS]"
fi
"$VENV/bin/modelmill" --help >/dev/null  # the entry point runs
echo "installed modelmill [$EXTRAS] in $VENV"
