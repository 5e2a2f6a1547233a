#!/usr/bin/env bash
# Set up the machine (idempotent) and run ferry's checks: ruff, then the whole test suite
# (unit + end-to-end in network namespaces; needs root). Extra args go to pytest.
set -uo pipefail
cd "$(dirname "$(readlink -f "$0")")/.."
export FERRY_CNI_PATH=${FERRY_CNI_PATH:-${FERRY_CNI_BIN:-/opt/cni/bin}}
bash scripts/setup.sh || { echo "set-up failed" >&2; exit 1; }
.venv/bin/ruff check . || exit 1
.venv/bin/python -m pytest -q -p no:cacheprovider --timeout=600 tests "$@"
rc=$?
# pytest exits 5 when it collected no test: that is a broken suite, not a pass.
if ((rc == 5)); then
    echo "pytest collected no tests: failing" >&2
    exit 1
fi
exit $rc
