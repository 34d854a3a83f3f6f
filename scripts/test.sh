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
# A MongoDB wire server for tests/test_mongodb.py, unless one is given (a real MongoDB).
if [ -z "${DAO_TEST_MONGODB_URI:-}" ]; then
    eval "$(bash scripts/mongo_test_server.sh start)"
    trap 'bash scripts/mongo_test_server.sh stop' EXIT
fi
# jobflow-remote in its own venv for tests/test_jobflow_remote.py (skips without it).
bash scripts/jobflow_remote_env.sh
.venv/bin/python -m pytest -ra "$@"
