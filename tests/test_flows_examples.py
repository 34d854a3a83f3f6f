"""The runnable examples in workflows/ work as documented (subprocesses, small settings)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from dao_flows.queries import list_runs
from dao_flows.testing import isolate_environment

REPO = Path(__file__).resolve().parents[1]
SMALL = (
    "--n 1 --n-random 2 --n-template 0 --steps 10 --formula-units 2 --seed 4 "
    "--relax-steps 15 --fmax 0.1"
).split()


@pytest.fixture(scope="session")
def checkpoints(tmp_path_factory):
    # One folder per session, shared by the test modules: building a model takes seconds.
    return tmp_path_factory.getbasetemp() / "dao_tiny_checkpoints"


@pytest.fixture
def run_example(tmp_path, monkeypatch, checkpoints):
    env = {
        **os.environ,
        **isolate_environment(monkeypatch, tmp_path, checkpoints),
        "PYTHONPATH": str(REPO),
    }

    def run(script: str, *args: str) -> str:
        proc = subprocess.run(
            [sys.executable, str(REPO / "workflows" / script), *args],
            env=env,
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=600,
        )
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
        return proc.stdout

    return run


def test_local_csp_example(run_example):
    out = run_example("local_csp.py", "NaCl", *SMALL)
    assert "NaCl:" in out and "unique of 3 candidates" in out
    assert len(list_runs("NaCl")) == 1


def test_fireworks_submit_example(run_example, tmp_path):
    out = run_example(
        "fireworks_submit.py",
        "NaCl",
        *SMALL,
        "--relax",
        "batched",
        "--launch-dir",
        str(tmp_path / "launches"),
    )
    assert "submitted 4 fireworks" in out and "COMPLETED" in out  # ... ranking, re-ranking
    assert "best" in out and list_runs("NaCl")[0]["relax_mode"] == "batched"


def test_batch_formulas_example(run_example):
    out = run_example("batch_formulas.py", "NaCl", "KBr", *SMALL)
    assert "NaCl:" in out and "KBr:" in out
    assert {r["reduced_formula"] for r in list_runs()} == {"NaCl", "KBr"}
