#!/usr/bin/env bash
# Regenerate the Python modules of the OIP gRPC service from the vendored KServe proto, and the messages of
# Triton's gRPC extensions (triton_extensions.proto: messages only; modelmill.serving.grpc registers their calls
# under the KServe service's name itself).
#   bash scripts/gen_grpc.sh        (needs the dev extra: grpcio-tools at the version in constraints.txt)
# The proto is compiled from src/ so that the generated modules import each other as
# modelmill.serving.proto.*; the outputs are committed, and ruff skips them (pyproject.toml).
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-.venv/bin/python}"
want="$(grep -E '^grpcio-tools==' constraints.txt | cut -d= -f3)"
have="$("$PY" -c 'import importlib.metadata as m; print(m.version("grpcio-tools"))')"
if [ "$want" != "$have" ]; then
    echo "gen_grpc.sh: grpcio-tools $have is installed; constraints.txt pins $want (pip install -c constraints.txt grpcio-tools)" >&2
    exit 1
fi
"$PY" -m grpc_tools.protoc -I src --python_out=src --pyi_out=src --grpc_python_out=src \
    modelmill/serving/proto/grpc_predict_v2.proto
"$PY" -m grpc_tools.protoc -I src --python_out=src --pyi_out=src modelmill/serving/proto/triton_extensions.proto
echo "generated src/modelmill/serving/proto/grpc_predict_v2_pb2{.py,.pyi,_grpc.py} and triton_extensions_pb2{.py,.pyi}" \
     "with grpcio-tools $have"
