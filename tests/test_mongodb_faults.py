"""Faults over the wire, nothing lost: `dao csp` killed with SIGKILL mid-flow, and the MongoDB
server going away mid-run. Same server and skips as tests/test_mongodb.py; document counts are
printed (pytest -s shows them)."""

from __future__ import annotations

import math
import os
import re
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import pytest
import test_mongodb as wire

# One job per candidate (1 + 6 + 1 jobs, a relaxation every few seconds here): a kill or a
# server stop lands between job documents, not after the last one.
# Re-ranking off: these tests are about the store (the re-ranking job: test_flows).
PER_CANDIDATE = ["--relax", "per-candidate", "--n", "1", "--n-random", "4", "--n-template", "1",
                 "--steps", "20", "--formula-units", "2", "--relax-steps", "100",
                 "--fmax", "0.01", "--seed", "5", "--refine-top", "0"]  # fmt: skip
N_JOBS = 1 + 6 + 1
RELAXED = {"name": {"$regex": "^CHGNet relax"}, "output": {"$ne": None}}


def start_dao_csp(out: Path) -> subprocess.Popen:
    """`dao csp` in its own process (the jobflow config comes from the environment); its
    terminal output goes to ``out``.txt."""
    log = open(out.with_suffix(".txt"), "w")  # the child writes it; closed when collected
    command = [sys.executable, "-m", "dao_flows.cli", "--threads", "1", "csp", "NaCl",
               *PER_CANDIDATE, "--out", str(out)]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT)


def wait_until(condition: Callable[[], bool], proc: subprocess.Popen, what: str) -> float:
    """Poll ``condition`` while ``proc`` runs (generous: a busy CI machine); seconds waited."""
    started = time.monotonic()
    while not condition():
        assert proc.poll() is None, f"dao csp ended (exit {proc.returncode}) before {what}"
        assert time.monotonic() - started < 900, f"no {what} after 900 s"
        time.sleep(0.1)
    return time.monotonic() - started


def assert_intact(store, docs: list[dict]) -> None:  # type: ignore[no-untyped-def]
    """Every job document loads whole through jobflow: its fields, its complete output and
    every large object it refers to (jobflow raises KeyError for a missing one)."""
    from jobflow.utils.find import find_key

    store.connect()
    for doc in docs:
        full = store.query_one({"uuid": doc["uuid"], "index": doc["index"]}, load=True)
        assert full is not None and full["completed_at"], doc["name"]
        assert not find_key(full, "blob_uuid"), f"{doc['name']}: unresolved data reference"
        out = full["output"]
        if doc["name"] == "dao generate":
            assert len(out["candidates"]) == 6
        elif doc["name"] == "dao rank":
            assert out["doc_type"] == "dao_csp_result" and out["polymorphs"]
        elif out is not None:  # a relaxation (None: a candidate rejected before relaxing)
            assert math.isfinite(out["output"]["energy"]) and out["structure"]["sites"]
            assert out["output"]["ionic_steps"], doc["name"]  # the trajectory, loaded


def job_keys(db) -> Counter:  # type: ignore[no-untyped-def]
    return Counter((d["uuid"], d["index"]) for d in db.outputs.find({}, {"uuid": 1, "index": 1}))


@pytest.fixture
def database(tmp_path, monkeypatch):
    """A fresh database on the test server, configured as the plugin's store."""
    import pymongo

    name = f"dao_test_{uuid.uuid4().hex[:8]}"
    wire.use_jobflow_config(tmp_path / "jobflow.yaml", wire.URI, name, monkeypatch)
    yield pymongo.MongoClient(wire.URI)[name]
    pymongo.MongoClient(wire.URI).drop_database(name)


@wire.needs_uri
def test_sigkill_mid_flow_leaves_finished_jobs_intact_and_a_rerun_completes(database, tmp_path):
    """SIGKILL once a relaxation is stored: every job document written is whole (a job's
    document is written after its large objects), the run has no result, and running the
    command again (a new run: `dao csp` does not resume) completes beside it, nothing
    duplicated and the killed run's documents untouched."""
    from dao_flows.queries import list_runs
    from dao_flows.stores import get_store

    proc = start_dao_csp(tmp_path / "killed")
    waited = wait_until(lambda: database.outputs.count_documents(RELAXED) > 0, proc, "relaxation")
    proc.kill()
    assert proc.wait(timeout=60) == -9
    printed = (tmp_path / "killed.txt").read_text()
    run = re.search(r"run (\S+) -> .*not resumed", printed)
    assert run, printed
    killed = list(database.outputs.find({}, {"uuid": 1, "index": 1, "name": 1, "metadata": 1}))
    blobs = database.outputs_data.count_documents({})
    print(
        f"\nSIGKILL {waited:.1f} s after start: {len(killed)} job documents "
        f"({sorted(d['name'] for d in killed)}), {blobs} data blobs"
    )
    assert 0 < len(killed) < N_JOBS and all(d["name"] != "dao rank" for d in killed)
    assert {d["metadata"]["dao_run"] for d in killed} == {run.group(1)}
    assert_intact(get_store(), killed)
    assert list_runs("NaCl") == []  # an interrupted run is never taken for a result

    again = start_dao_csp(tmp_path / "again")
    assert again.wait(timeout=900) == 0, (tmp_path / "again.txt").read_text()[-3000:]
    docs = list(database.outputs.find({}, {"uuid": 1, "index": 1, "name": 1, "metadata": 1}))
    per_run = Counter(d["metadata"]["dao_run"] for d in docs)
    job_ids = {d["uuid"] for d in docs}
    orphans = sum(b["job_uuid"] not in job_ids for b in database.outputs_data.find({}))
    print(
        f"after the re-run: {len(docs)} job documents {dict(per_run)}, "
        f"{database.outputs_data.count_documents({})} data blobs, {orphans} orphaned"
    )
    assert max(job_keys(database).values()) == 1  # no (uuid, index) stored twice
    assert per_run[run.group(1)] == len(killed) and len(per_run) == 2
    assert sorted(per_run.values()) == sorted([len(killed), N_JOBS])
    assert_intact(get_store(), docs)
    (result,) = list_runs("NaCl")
    assert result["run_uuid"] != run.group(1)


@pytest.mark.skipif(
    not wire.MONGOECO.is_file(), reason="no mongoeco venv (scripts/mongo_test_server.sh makes it)"
)
def test_server_going_away_mid_run_is_a_clear_error_and_loses_nothing(tmp_path, monkeypatch):
    """The server stops while `dao csp` relaxes: the run ends soon after with an error naming
    host:port (never the password) instead of failing job after job, and every document
    written before is there, whole, when the server comes back on the same SQLite file."""
    import pymongo
    from jobflow import JobStore
    from maggma.stores import MongoURIStore

    password, db_file = "g0ne-Pa55word", tmp_path / "db.sqlite"

    def auth(uri: str) -> str:  # see test_mongodb: mongoeco needs the mechanism named
        host = uri.split("//", 1)[1]
        return f"mongodb://dao:{password}@{host}&authSource=admin&authMechanism=SCRAM-SHA-256"

    with wire.own_server(db_file, f"dao:{password}") as uri:
        address = re.search(r"//([^/?]+)", uri).group(1)
        # A short server-selection timeout (any pymongo URI option works in the config).
        wire.use_jobflow_config(
            tmp_path / "jobflow.yaml",
            auth(uri) + "&serverSelectionTimeoutMS=3000",
            "dao",
            monkeypatch,
        )
        db = pymongo.MongoClient(auth(uri)).dao
        proc = start_dao_csp(tmp_path / "out")
        wait_until(lambda: db.outputs.count_documents(RELAXED) > 0, proc, "relaxation")
        before = (db.outputs.count_documents({}), db.outputs_data.count_documents({}))
        stopped = time.monotonic()
    assert proc.wait(timeout=600) == 1
    ended = time.monotonic() - stopped
    printed = " ".join((tmp_path / "out.txt").read_text().split())
    print(
        f"\nserver stopped with {before[0]} job documents, {before[1]} data blobs stored; "
        f"dao csp ended {ended:.1f} s later: {printed[printed.find('error:') :][:400]}"
    )
    assert f"MongoDB server {address} of the job store" in printed
    assert "cannot be reached" in printed and "Documents written before are kept" in printed
    assert password not in printed and "Traceback" not in printed
    assert password not in (tmp_path / "out" / "dao_csp.log").read_text()

    with wire.own_server(db_file, f"dao:{password}") as uri:  # back, on the same file
        db = pymongo.MongoClient(auth(uri)).dao
        after = (db.outputs.count_documents({}), db.outputs_data.count_documents({}))
        print(f"after the restart: {after[0]} job documents, {after[1]} data blobs")
        assert after[0] >= before[0] and after[1] >= before[1]
        assert after[0] < N_JOBS and db.outputs.count_documents({"name": "dao rank"}) == 0
        store = lambda name: MongoURIStore(auth(uri), name, database="dao")  # noqa: E731
        docs = list(db.outputs.find({}, {"uuid": 1, "index": 1, "name": 1}))
        assert_intact(JobStore(store("outputs"), {"data": store("outputs_data")}), docs)
