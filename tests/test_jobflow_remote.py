"""jobflow-remote end to end on the MongoDB wire server: a project whose queue and jobstore are
on `DAO_TEST_MONGODB_URI`, a local worker, `workflows/jobflow_remote_submit.py` submitting the
CSP flow and the runner daemon (`jf runner start`, supervisord) running it; the result is read
back with `dao query`'s functions. jobflow-remote lives in .jfremote-venv
(scripts/jobflow_remote_env.sh): it pins pymongo<4.11, so it stays out of the main venv."""

from __future__ import annotations

import os
import subprocess
import time
import uuid
from pathlib import Path

import pytest
import test_mongodb as wire
from monty.serialization import dumpfn

REPO = Path(__file__).resolve().parents[1]
VENV = REPO / ".jfremote-venv" / "bin"
JF = VENV / "jf"
SMALL = "--relax per-candidate --n 1 --n-random 1 --n-template 1 --steps 20 --formula-units 2 \
--relax-steps 20 --fmax 0.1 --seed 3 --device cpu --refine-top 0".split()
N_JOBS = 1 + 3 + 1  # generation, one relaxation per candidate, ranking


def project(folder: Path, uri: str, database: str) -> dict:
    """A jobflow-remote project: queue and jobstore on ``uri``, one local worker, and a runner
    that polls every second (its defaults, 30 s, suit clusters, not a test)."""
    store = lambda name: {"type": "MongoStore", "uri": uri, "database": database,  # noqa: E731
                          "collection_name": name}  # fmt: skip
    return {
        "name": "dao_test",
        "base_dir": str(folder / "project"),
        "workers": {
            "local": {
                "type": "local",
                "scheduler_type": "shell",
                "work_dir": str(folder / "work"),
                "execution_cmd": f"{JF} -fe execution run {{}}",  # this venv's jf
                "pre_run": "export OMP_NUM_THREADS=1",
            }
        },
        "queue": {"store": store("jobs")},
        "jobstore": {
            "docs_store": store("outputs"),
            "additional_stores": {"data": store("outputs_data")},
        },
        "runner": {"delay_checkout": 1, "delay_check_run_status": 1, "delay_advance_status": 1},
    }


@pytest.fixture
def database():
    import pymongo

    name = f"dao_jfr_{uuid.uuid4().hex[:8]}"
    yield name
    pymongo.MongoClient(wire.URI).drop_database(name)


@wire.needs_uri
@pytest.mark.skipif(
    not JF.exists(), reason="no .jfremote-venv (scripts/jobflow_remote_env.sh makes it)"
)
def test_jobflow_remote_runs_the_csp_flow_with_a_local_worker(
    dao_env, database, tmp_path, monkeypatch
):
    import pymongo

    from dao_flows.queries import get_result

    (tmp_path / "projects").mkdir()
    dumpfn(project(tmp_path, wire.URI, database), str(tmp_path / "projects" / "dao_test.yaml"))
    env = {
        **os.environ,
        "JFREMOTE_PROJECTS_FOLDER": str(tmp_path / "projects"),
        "JFREMOTE_PROJECT": "dao_test",
        "JFREMOTE_CONFIG_FILE": str(tmp_path / "none.yaml"),
        "PYTHONPATH": str(REPO),
        "PATH": f"{VENV}{os.pathsep}{os.environ['PATH']}",  # the daemon runs `supervisord`
    }

    def jf(*args: str, check: bool = True) -> str:
        done = subprocess.run([str(JF), *args], env=env, cwd=tmp_path, capture_output=True,
                              text=True, timeout=300)  # fmt: skip
        assert done.returncode == 0 or not check, done.stdout[-2000:] + done.stderr[-2000:]
        return done.stdout

    db = pymongo.MongoClient(wire.URI)[database]
    try:
        jf("admin", "reset", "--yes")  # creates the queue's collections and indexes
        submit = subprocess.run(
            [str(VENV / "python"), str(REPO / "workflows" / "jobflow_remote_submit.py"), "NaCl",
             "--worker", "local", *SMALL],
            env=env, cwd=tmp_path, capture_output=True, text=True, timeout=600,
        )  # fmt: skip
        assert submit.returncode == 0, submit.stdout[-2000:] + submit.stderr[-2000:]
        assert f"{N_JOBS} jobs" in submit.stdout
        jf("runner", "start", "--single")
        started = time.monotonic()
        while (state := (db.flows.find_one() or {}).get("state")) not in ("COMPLETED", "FAILED"):
            assert time.monotonic() - started < 900, f"flow still {state} after 900 s"
            time.sleep(1)
        took = time.monotonic() - started
    finally:
        jf("runner", "shutdown")  # supervisord stops once the runner has finished
        deadline = time.monotonic() + 300
        # While supervisord stops, `jf runner status` can itself fail ("the daemon is likely
        # shutting down"): poll until it reports shut_down.
        while "shut_down" not in jf("runner", "status", check=False) and (
            time.monotonic() < deadline
        ):
            time.sleep(1)
    states = sorted(d["state"] for d in db.jobs.find({}, {"state": 1}))
    print(f"\njobflow-remote: flow {state} {took:.0f} s after `jf runner start`; jobs {states}; "
          f"{db.outputs.count_documents({})} job documents, "
          f"{db.outputs_data.count_documents({})} data blobs")  # fmt: skip
    assert state == "COMPLETED" and states == ["COMPLETED"] * N_JOBS
    wire.use_jobflow_config(tmp_path / "jobflow.yaml", wire.URI, database, monkeypatch)
    result = get_result("NaCl")  # what `dao query NaCl` shows
    assert result.n_candidates == 3 and result.relax_mode == "per-candidate"
    assert db.outputs.count_documents({}) == N_JOBS
