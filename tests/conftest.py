"""Shared fixtures: the datasets folder ($DAO_DATASETS, default ../shared/datasets) and an
isolated DAO environment (store, checkpoints, one thread) for workflow tests."""

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def datasets_dir() -> Path:
    path = Path(os.environ.get("DAO_DATASETS", REPO.parent / "shared" / "datasets"))
    if not path.is_dir():
        pytest.skip(f"datasets folder {path} not found (set DAO_DATASETS to the shared datasets)")
    return path


@pytest.fixture(scope="session")
def checkpoints(tmp_path_factory):
    # One folder per session, shared by the test modules: building a model takes seconds.
    return tmp_path_factory.getbasetemp() / "dao_tiny_checkpoints"


@pytest.fixture
def dao_env(tmp_path, monkeypatch, checkpoints):
    from dao_flows.testing import isolate_environment, single_threaded

    env = isolate_environment(monkeypatch, tmp_path, checkpoints)
    monkeypatch.chdir(tmp_path)
    with single_threaded():
        yield env
