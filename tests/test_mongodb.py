"""Results in a real MongoDB over the wire: a jobflow config pointing the plugin at a MongoDB
(maggma MongoURIStore docs + data stores), `dao csp` writing there and `dao query` reading back
over a new connection. The server is `DAO_TEST_MONGODB_URI`: `scripts/test.sh` starts a local
mongoeco one (scripts/mongo_test_server.sh); point it at a real MongoDB to run the same tests."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from monty.serialization import dumpfn
from typer.testing import CliRunner

URI = os.environ.get("DAO_TEST_MONGODB_URI")
needs_uri = pytest.mark.skipif(
    not URI, reason="DAO_TEST_MONGODB_URI not set (scripts/mongo_test_server.sh starts a server)"
)

# Re-ranking off: these tests are about the store (the re-ranking job: test_flows).
SMALL = ["--n", "1", "--n-random", "2", "--n-template", "1", "--steps", "20",
         "--formula-units", "2", "--relax-steps", "20", "--fmax", "0.1", "--seed", "5",
         "--refine-top", "0"]  # fmt: skip


def use_jobflow_config(path: Path, uri: str, database: str, monkeypatch) -> None:
    """Write a jobflow config of MongoURIStores (docs + data), as a user does for their
    MongoDB, and point the plugin at it."""
    store = lambda collection: {  # noqa: E731
        "type": "MongoURIStore", "uri": uri, "database": database,
        "collection_name": collection,
    }  # fmt: skip
    config = {"JOB_STORE": {"docs_store": store("outputs"),
                            "additional_stores": {"data": store("outputs_data")}}}  # fmt: skip
    dumpfn(config, str(path))
    monkeypatch.setenv("JOBFLOW_CONFIG_FILE", str(path))
    monkeypatch.delenv("JOBFLOW_JOB_STORE", raising=False)


@pytest.fixture
def mongo_config(tmp_path, monkeypatch):
    """A fresh database on the test server, configured as the plugin's store."""
    database = f"dao_test_{uuid.uuid4().hex[:8]}"
    use_jobflow_config(tmp_path / "jobflow.yaml", URI, database, monkeypatch)
    yield database
    import pymongo

    pymongo.MongoClient(URI).drop_database(database)


@needs_uri
def test_dao_csp_writes_to_mongodb_and_dao_query_reads_it_back(mongo_config, tmp_path):
    import pymongo

    from dao_flows.stores import get_store

    assert type(get_store().docs_store).__name__ == "MongoURIStore"
    runner = CliRunner()
    result = runner.invoke(app(), ["csp", "NaCl", *SMALL, "--out", str(tmp_path / "out")])
    assert result.exit_code == 0, result.output
    assert "rank" in result.output.lower()
    # A new connection (as another process would open) sees every job's document.
    db = pymongo.MongoClient(URI)[mongo_config]
    names = sorted(d["name"] for d in db.outputs.find({}, {"name": 1}))
    assert names == ["dao batched relax", "dao generate", "dao rank"]
    ranked = db.outputs.find_one({"name": "dao rank"})["output"]
    assert ranked["doc_type"] == "dao_csp_result" and ranked["polymorphs"]
    assert ranked["polymorphs"][0]["chemsys"] == "Cl-Na"
    assert db.outputs_data.count_documents({}) >= 1  # per-step energies in the data store
    query = runner.invoke(app(), ["query", "NaCl"])
    assert query.exit_code == 0, query.output
    indexed = {k for info in db.outputs.index_information().values() for k, _ in info["key"]}
    assert {"output.doc_type", "output.reduced_formula", "output.run_uuid"} <= indexed
    assert ranked["run_uuid"][:8] in query.output or "NaCl" in query.output
    # Running again adds a second run, not duplicates of the first run's jobs.
    again = runner.invoke(app(), ["csp", "NaCl", *SMALL, "--out", str(tmp_path / "out2")])
    assert again.exit_code == 0, again.output
    assert db.outputs.count_documents({"name": "dao rank"}) == 2
    assert db.outputs.count_documents({}) == 6


def app():
    from dao_flows.cli import app

    return app


MONGOECO = Path(__file__).resolve().parents[1] / ".mongoeco-venv" / "bin" / "python"


@contextmanager
def own_server(db: Path, credentials: str | None = None) -> Iterator[str]:
    """A mongoeco server of this test's own on ``db`` (stopped on exit); with ``credentials``
    ("user:password") clients must authenticate."""
    script = Path(__file__).resolve().parents[1] / "scripts" / "mongo_test_server.py"
    args = [str(MONGOECO), str(script), "--db", str(db)]
    env = dict(os.environ)
    if credentials:
        env["DAO_TEST_MONGO_AUTH"] = credentials
        args += ["--auth-env", "DAO_TEST_MONGO_AUTH"]
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, text=True, env=env)
    try:
        line = proc.stdout.readline()  # "ready mongodb://..." once it accepts connections
        assert line.startswith("ready "), line
        yield line.split(None, 1)[1].strip()
    finally:
        proc.terminate()
        proc.wait(timeout=30)


@pytest.mark.skipif(
    not MONGOECO.is_file(), reason="no mongoeco venv (scripts/mongo_test_server.sh makes it)"
)
def test_documents_survive_a_server_restart(tmp_path):
    """Job documents written through maggma survive the server going down and coming back
    (on another port: a new process)."""
    import pymongo
    from jobflow import JobStore, job, run_locally
    from maggma.stores import MongoURIStore

    @job
    def add(a: int, b: int) -> int:
        return a + b

    db = tmp_path / "db.sqlite"
    with own_server(db) as uri:
        docs = MongoURIStore(uri, "outputs", database="dao")
        store = JobStore(docs, additional_stores={"data": MongoURIStore(uri, "data", "dao")})
        flow = add(1, 2)
        run_locally(flow, store=store, log=False)
    with own_server(db) as uri:  # a new process, a new port, the same SQLite file
        doc = pymongo.MongoClient(uri).dao.outputs.find_one({"uuid": flow.uuid})
        assert doc is not None and doc["output"] == 3


@needs_uri
def test_two_processes_writing_at_once_lose_nothing(mongo_config, tmp_path):
    """Two `dao csp` processes write to the same database at the same time: every job document
    of both runs is there afterwards."""
    import pymongo

    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    dao = [sys.executable, "-m", "dao_flows.cli", "--threads", "1", "csp"]
    procs = [
        subprocess.Popen([*dao, formula, *SMALL, "--out", str(tmp_path / formula)], env=env,
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        for formula in ("NaCl", "KCl")
    ]  # fmt: skip
    outputs = [p.communicate(timeout=600)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outputs
    db = pymongo.MongoClient(URI)[mongo_config]
    results = {d["output"]["reduced_formula"] for d in db.outputs.find({"name": "dao rank"})}
    assert results == {"NaCl", "KCl"} and db.outputs.count_documents({}) == 6


@pytest.mark.skipif(
    not MONGOECO.is_file(), reason="no mongoeco venv (scripts/mongo_test_server.sh makes it)"
)
def test_the_password_never_reaches_documents_logs_or_output(tmp_path, monkeypatch):
    """With credentials in the user's jobflow config (the only place they belong), a CSP run
    stores results, and the password appears in no stored document, no log, no terminal line."""
    import pymongo

    password = "s3cr3t-Pa55word"
    with own_server(tmp_path / "db.sqlite", f"dao:{password}") as uri:
        host = uri.split("//", 1)[1]
        # mongoeco does not advertise saslSupportedMechs, so pymongo would fall back to
        # SCRAM-SHA-1, which it refuses: name the mechanism (a real MongoDB needs no such hint).
        auth_uri = f"mongodb://dao:{password}@{host}&authSource=admin&authMechanism=SCRAM-SHA-256"
        use_jobflow_config(tmp_path / "jobflow.yaml", auth_uri, "dao", monkeypatch)
        out = tmp_path / "out"
        result = CliRunner().invoke(app(), ["csp", "NaCl", *SMALL, "--out", str(out)])
        assert result.exit_code == 0, result.output
        assert password not in result.output
        client = pymongo.MongoClient(auth_uri)
        stored = [str(doc) for name in client.list_database_names()
                  for coll in client[name].list_collection_names()
                  for doc in client[name][coll].find()]  # fmt: skip
        assert any("dao_csp_result" in doc for doc in stored)
        assert not any(password in doc for doc in stored)
        for file in out.rglob("*"):
            if file.is_file() and file.suffix in (".log", ".md", ".cif"):
                assert password not in file.read_text(errors="ignore"), file
        with pytest.raises(pymongo.errors.OperationFailure):  # the server does check it
            pymongo.MongoClient(uri).dao.outputs.find_one()
