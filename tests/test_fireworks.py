"""Real FireWorks launches of the CSP workflow on the embedded (mongomock-persistence)
LaunchPad: in-process rapidfire with a failing relaxation, and the `dao submit` + `rlaunch`
executables in subprocesses. Results land in the embedded MontyDB job store."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from dao_flows.fireworks import (
    close_launchpad,
    embedded_launchpad,
    embedded_launchpad_file,
    launch,
    submit_flow,
    workflow_states,
)
from dao_flows.flows import dao_csp_flow
from dao_flows.queries import get_result, list_runs
from dao_flows.stores import store_dir
from dao_flows.testing import nan_structure

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
SMALL = dict(
    n=1, n_random=3, n_template=0, steps=20, formula_units=2, seed=21, relax_steps=20, fmax=0.1
)


def test_embedded_launchpad_rapidfire_survives_a_fizzled_relaxation(dao_env, tmp_path):
    flow = dao_csp_flow("NaCl", relax="per-candidate", **SMALL)  # one firework each
    (bad,) = [j for j in flow.jobs if j.name.endswith("pyxtal-001")]
    bad.function_args = (nan_structure(),)  # this candidate's relaxation raises

    info = submit_flow(flow)
    lp = info["launchpad"]
    assert info["n_fireworks"] == 1 + 4 + 1 + 1  # generation, relaxations, ranking, re-ranking
    lp_file = store_dir() / "launchpad.json"
    assert Path(info["embedded_file"]) == embedded_launchpad_file() == lp_file
    launch(lp, launch_dir=tmp_path / "launches")

    states = workflow_states(lp, info["fw_ids"])
    by_name = {lp.get_fw_dict_by_id(i)["name"]: s for i, s in states.items()}
    assert by_name[bad.name] == "FIZZLED"
    assert by_name["dao rank"] == "COMPLETED"  # ran although a parent fizzled
    assert sum(s == "COMPLETED" for s in states.values()) == len(states) - 1

    result = get_result(run_uuid=flow.uuid)
    failed = {f.candidate_id: f for f in result.failed}
    assert failed["pyxtal-001"].stage == "relaxation"
    assert failed["pyxtal-001"].job_uuid == bad.uuid
    assert result.polymorphs  # the other candidates were relaxed and ranked
    assert result.n_candidates == 4

    # The LaunchPad file persists: a new client in this process sees the same states.
    close_launchpad(lp)
    assert workflow_states(embedded_launchpad(), info["fw_ids"]) == states


def test_dao_submit_then_rlaunch_executables(dao_env, tmp_path):
    env = {**os.environ, **dao_env, "PYTHONPATH": str(REPO), "PYTHONUNBUFFERED": "1"}
    submit = subprocess.run(
        [sys.executable, "-m", "dao_flows.cli"]
        + "submit NaCl --relax batched --n 1 --n-random 2 --n-template 0 --steps 20 "
        "--formula-units 2 --seed 3 --relax-steps 20 --fmax 0.1 --device cpu".split(),
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert submit.returncode == 0, submit.stdout + submit.stderr
    assert "submitted workflow" in submit.stdout and "rlaunch rapidfire" in submit.stdout
    lp_file = store_dir() / "launchpad.json"
    assert f"MONGOMOCK_SERVERSTORE_FILE={lp_file}" in submit.stdout
    assert list_runs("NaCl") == []  # nothing has run yet

    rlaunch = BIN / "rlaunch"
    if not rlaunch.exists():
        pytest.skip(f"no rlaunch executable next to {sys.executable}")
    run = subprocess.run(
        [str(rlaunch), "rapidfire"],
        env={**env, "MONGOMOCK_SERVERSTORE_FILE": str(lp_file)},
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]

    lp = embedded_launchpad()  # reads the file rlaunch wrote back
    ids = lp.get_fw_ids()
    assert len(ids) == 4  # generation, batched relaxation, ranking, re-ranking
    assert set(workflow_states(lp, ids).values()) == {"COMPLETED"}
    runs = list_runs("NaCl")
    assert len(runs) == 1 and runs[0]["relax_mode"] == "batched"
    result = get_result("NaCl")
    assert result.n_candidates == 3 and result.provenance["generation"]["seed"] == 3
