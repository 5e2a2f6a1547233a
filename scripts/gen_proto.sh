#!/usr/bin/env bash
# Regenerate plugin/agent/ferry_pb2*.py from plugin/agent/ferry.proto (needs grpcio-tools,
# installed by `pip install -e '.[dev]'`). The generated modules are committed.
set -euo pipefail
cd "$(dirname "$(readlink -f "$0")")/.."
.venv/bin/python -m grpc_tools.protoc -I . --python_out=. --pyi_out=. --grpc_python_out=. \
    plugin/agent/ferry.proto
# The tests' slice of the Kubernetes CRI (runtime.v1), imported as top-level modules.
.venv/bin/python -m grpc_tools.protoc -I tests --python_out=tests --pyi_out=tests \
    --grpc_python_out=tests tests/cri_api.proto
