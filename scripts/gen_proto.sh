#!/usr/bin/env bash
# Regenerate the committed gRPC modules (needs grpcio-tools, installed by
# `pip install -e '.[dev]'`): ferryd's API (plugin/agent/ferry.proto) and the subset of etcd's
# v3 API that the etcd datastore speaks (plugin/datastore/etcd_rpc.proto) and the cluster API
# (plugin/cluster/cluster.proto).
set -euo pipefail
cd "$(dirname "$(readlink -f "$0")")/.."
for proto in plugin/agent/ferry.proto plugin/datastore/etcd_rpc.proto plugin/cluster/cluster.proto; do
    .venv/bin/python -m grpc_tools.protoc -I . --python_out=. --pyi_out=. --grpc_python_out=. \
        "$proto"
done
# The tests' slice of the Kubernetes CRI (runtime.v1), imported as top-level modules.
.venv/bin/python -m grpc_tools.protoc -I tests --python_out=tests --pyi_out=tests \
    --grpc_python_out=tests tests/cri_api.proto
