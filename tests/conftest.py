"""Shared fixtures: the datasets folder ($DAO_DATASETS, default ../shared/datasets)."""

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
