#!/usr/bin/env bash
# jobflow-remote for tests/test_jobflow_remote.py, in a venv of its own on top of .venv:
# jobflow-remote 1.0 pins pymongo<4.11, which must not downgrade the package's environment.
# The new venv sees .venv's packages (dao-csp, torch, jobflow, ...) through a .pth file; its own
# (jobflow-remote, pymongo 4.10, supervisor) come first.  Without it that test skips.
set -uo pipefail
cd "$(dirname "$0")/.."
VENV=.jfremote-venv
[ -x $VENV/bin/jf ] && exit 0
PY=$(.venv/bin/python -c 'import sys; print(sys._base_executable)')
MAIN_SITE=$(.venv/bin/python -c 'import site; print(site.getsitepackages()[0])')
if "$PY" -m venv $VENV >&2; then
    SITE=$($VENV/bin/python -c 'import site; print(site.getsitepackages()[0])')
    echo "import site; site.addsitedir('$MAIN_SITE')" > "$SITE/dao_main_venv.pth"
    $VENV/bin/pip install -q "jobflow-remote>=1.0" >&2 && exit 0
fi
echo "could not install jobflow-remote; tests/test_jobflow_remote.py will skip" >&2
rm -rf $VENV
exit 0
