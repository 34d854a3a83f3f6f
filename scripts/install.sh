#!/usr/bin/env bash
# Create .venv and install the package with its test tools. PyTorch is pinned here (a CPU
# build); the package metadata stays permissive so GPU users keep their own torch.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
.venv/bin/pip install -q --upgrade pip
.venv/bin/pip install -q "torch==${DAO_TORCH_VERSION:-2.13.0}"
.venv/bin/pip install -q -e ".[dev]"
