#!/usr/bin/env bash
# ferry demo on a simulated node: `sudo bash scripts/demo.sh [-v]`.
# Sets the node up (scripts/setup.sh, idempotent), then runs scripts/demo.py, which builds
# its own network namespaces and removes them again; the exit status is the demo's.
set -euo pipefail
cd "$(dirname "$(readlink -f "$0")")/.."
if [[ $(id -u) -ne 0 ]]; then
    echo "demo.sh: run as root (sudo bash scripts/demo.sh)" >&2
    exit 2
fi
bash scripts/setup.sh
exec .venv/bin/python scripts/demo.py "$@"
