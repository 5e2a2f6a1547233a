#!/usr/bin/env bash
# ferry demo on a simulated node: `bash scripts/demo.sh [-v]` as root (or through sudo).
# Sets the node up (scripts/setup.sh, idempotent; its output kept in a log, shown on failure),
# then runs scripts/demo.py, which builds its own network namespaces, ferryd and BPF pins and
# removes them again; the exit status is the demo's.
set -euo pipefail
cd "$(dirname "$(readlink -f "$0")")/.."
if [[ $(id -u) -ne 0 ]]; then
    echo "demo.sh: run as root (su -c, or sudo bash scripts/demo.sh)" >&2
    exit 2
fi
# setup.sh's own output (apt, pip) goes to a log, shown only if it fails.
setup_log=$(mktemp /tmp/ferry-setup.XXXXXX.log)
if ! bash scripts/setup.sh >"$setup_log" 2>&1; then
    cat "$setup_log" >&2
    echo "demo.sh: scripts/setup.sh failed (log above, also in $setup_log)" >&2
    exit 1
fi
tail -n 1 "$setup_log"
rm -f "$setup_log"
exec .venv/bin/python scripts/demo.py "$@"
