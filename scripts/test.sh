#!/usr/bin/env bash
# Install everything the tests use (Quantum ESPRESSO from Debian, the package in .venv) and run
# the whole test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v pw.x >/dev/null 2>&1; then
    bash .ci/install_qe.sh
fi
bash scripts/install.sh
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
.venv/bin/python -m pytest -ra "$@"
