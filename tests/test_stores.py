"""The job store DAO workflows write to: embedded MontyDB by default, the user's jobflow
configuration when there is one; persistence and re-runs without duplicates."""

from __future__ import annotations

from pathlib import Path

import pytest
from jobflow import Flow, JobStore, job, run_locally
from maggma.stores import MemoryStore, MontyStore
from monty.serialization import loadfn

from dao_flows.stores import DAOJobStore, get_store, store_dir, user_jobflow_config

REPO = Path(__file__).resolve().parents[1]


@job(data=["trajectory"])
def fake_relax(x: float) -> dict:
    """A job with a large object that goes to the `data` store (like atomate2's trajectories)."""
    return {"energy": -x, "trajectory": [x * i for i in range(200)]}


@job
def summarise(outputs: list) -> dict:
    return {"n": len(outputs), "best": min(o["energy"] for o in outputs)}


@pytest.fixture
def clean_env(tmp_path, monkeypatch):
    monkeypatch.setenv("JOBFLOW_CONFIG_FILE", str(tmp_path / "absent.yaml"))
    monkeypatch.delenv("JOBFLOW_JOB_STORE", raising=False)
    monkeypatch.delenv("DAO_STORE_DIR", raising=False)
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))
    return tmp_path


def test_default_location_is_per_user_and_overridable(clean_env, monkeypatch):
    assert store_dir() == clean_env / "xdg" / "dao" / "store"
    store = get_store()
    assert isinstance(store, DAOJobStore)
    assert isinstance(store.docs_store, MontyStore) and store.docs_store.storage == "sqlite"
    assert Path(store.docs_store.database_path) == (clean_env / "xdg/dao/store").resolve()
    assert set(store.additional_stores) == {"data"}
    monkeypatch.setenv("DAO_STORE_DIR", str(clean_env / "elsewhere"))
    assert Path(get_store().docs_store.database_path) == (clean_env / "elsewhere").resolve()


def test_persistent_and_rerun_does_not_duplicate(clean_env):
    relax = [fake_relax(1.0), fake_relax(2.0)]
    flow = Flow([*relax, summarise([j.output for j in relax])])
    run_locally(flow, store=get_store(), log=False)

    store = get_store()  # a new connection: the documents were written to disk
    store.connect()
    assert store.count() == 3
    assert store.additional_stores["data"].count() == 2
    doc = store.query_one({"uuid": flow.jobs[0].uuid}, load=True)
    assert doc["output"]["trajectory"][199] == 199.0  # blob reassembled from the data store
    raw = store.query_one({"uuid": flow.jobs[0].uuid}, load=False)
    assert "blob_uuid" in raw["output"]["trajectory"]

    for _ in range(2):  # the same flow object again, twice: upserts, nothing duplicated
        run_locally(flow, store=get_store(), log=False)
    store = get_store()
    store.connect()
    assert store.count() == 3
    assert store.additional_stores["data"].count() == 2
    assert store.get_output(flow.jobs[2].uuid) == {"n": 2, "best": -2.0}


def test_user_jobflow_config_is_honoured_unchanged(clean_env, monkeypatch):
    user_dir = clean_env / "user_store"
    cfg = clean_env / "jobflow.yaml"
    cfg.write_text(
        "JOB_STORE:\n"
        "  docs_store:\n"
        f"    type: MontyStore\n    database_path: {user_dir}\n"
        "    collection_name: my_outputs\n    storage: sqlite\n"
        "  additional_stores:\n"
        "    data:\n"
        f"      type: MontyStore\n      database_path: {user_dir}\n"
        "      collection_name: my_blobs\n      storage: sqlite\n"
    )
    monkeypatch.setenv("JOBFLOW_CONFIG_FILE", str(cfg))
    assert user_jobflow_config() == str(cfg)
    store = get_store()
    # The user's stores as configured; DAOJobStore only orders the writes (document last).
    assert isinstance(store, DAOJobStore)
    assert store.docs_store.collection_name == "my_outputs"
    assert store.docs_store.database_path == str(user_dir)
    run_locally(fake_relax(3.0), store=store, log=False)
    store.connect()
    assert store.count() == 1
    # An explicit path still selects the embedded store.
    assert isinstance(get_store(clean_env / "explicit"), DAOJobStore)


def test_config_without_job_store_keeps_embedded(clean_env, monkeypatch):
    cfg = clean_env / "jobflow.yaml"
    cfg.write_text('LOG_FORMAT: "%(message)s"\n')
    monkeypatch.setenv("JOBFLOW_CONFIG_FILE", str(cfg))
    assert user_jobflow_config() is None
    assert isinstance(get_store(), DAOJobStore)


def test_jobflow_env_store_counts_as_user_config(clean_env, monkeypatch):
    monkeypatch.setenv("JOBFLOW_JOB_STORE", '{"docs_store": {"type": "MemoryStore"}}')
    assert user_jobflow_config() == "$JOBFLOW_JOB_STORE"


def test_config_templates_parse():
    spec = loadfn(REPO / "workflows/config/jobflow.yaml")["JOB_STORE"]
    store = JobStore.from_dict_spec(spec)  # builds the stores without connecting
    assert store.docs_store.__class__.__name__ == "MongoStore"
    assert "data" in store.additional_stores
    lp = loadfn(REPO / "workflows/config/my_launchpad.yaml")
    assert lp["name"] == "dao_fireworks"
    assert loadfn(REPO / "workflows/config/my_fworker.yaml")["name"] == "dao_worker"
    assert isinstance(JobStore(MemoryStore()), JobStore)


def test_store_descriptions_never_show_a_password() -> None:
    from dao_flows.stores import redact

    named = "mongo://mongodb+srv://dao:s3cr3t@cluster0.example.net/?retryWrites=true/dao/outputs"
    assert (
        redact(named)
        == "mongo://mongodb+srv://dao:***@cluster0.example.net/?retryWrites=true/dao/outputs"
    )
    assert redact("mongodb://host:27017/dao") == "mongodb://host:27017/dao"
    assert (
        redact("monty:///home/me/.local/share/dao/store")
        == "monty:///home/me/.local/share/dao/store"
    )


class FailingStore(MemoryStore):
    """A data store whose writes fail, as when the process dies or the server goes away."""

    def update(self, docs, key=None):  # type: ignore[no-untyped-def]
        raise ConnectionError("data store went away")


def test_a_failed_data_write_leaves_no_document_behind():
    """The job document is written after its large objects: if they never arrive, no
    document points at them (plain jobflow writes the document first)."""
    for cls, documents_left in ((JobStore, 1), (DAOJobStore, 0)):
        store = cls(MemoryStore(), additional_stores={"data": FailingStore()})
        with pytest.raises(ConnectionError):
            run_locally(fake_relax(1.0), store=store, log=False, raise_immediately=True)
        assert store.docs_store.count() == documents_left, cls
