"""Helpers for tests, examples and benchmarks that need DAO checkpoints without trained weights.

``tiny_checkpoints(folder)`` writes an (untrained, deterministic) DAO-G and DAO-P pair of the
"tiny" Crysformer preset; pass their paths as ``model=`` / ``guidance=`` or through
``$DAO_G_MODEL`` / ``$DAO_P_MODEL``. Their samples are random-looking structures: fine for
exercising the workflow machinery, meaningless as predictions.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # pytest is a dev dependency: only the annotations name it
    from collections.abc import Iterator
    from contextlib import AbstractContextManager

    import pytest
    from pymatgen.core import Structure


def tiny_checkpoints(folder: str | Path, seed: int = 0) -> tuple[str, str]:
    """(dao-g path, dao-p path); re-uses checkpoints already in ``folder``."""
    import torch

    from dao_core.checkpoint import save_model
    from dao_core.dao import DAOModel
    from dao_core.model import CrysformerConfig

    folder = Path(folder)
    paths = []
    for offset, kind in enumerate(("dao-g", "dao-p")):
        path = folder / f"tiny-{kind}"
        if not (path / "model.safetensors").is_file():
            torch.manual_seed(seed + offset)  # distinct weights, so distinct hashes
            model = DAOModel(kind, CrysformerConfig.preset("tiny"))  # type: ignore[arg-type]
            save_model(model, path, record={"note": "untrained test checkpoint"})
        paths.append(str(path))
    return paths[0], paths[1]


def isolate_environment(
    monkeypatch: pytest.MonkeyPatch, folder: str | Path, checkpoints: str | Path | None = None
) -> dict[str, str]:
    """Point every DAO location at ``folder`` and hide user configuration (for tests).

    Sets ``$DAO_STORE_DIR``, tiny ``$DAO_G_MODEL``/``$DAO_P_MODEL`` checkpoints, a non-existent
    ``$JOBFLOW_CONFIG_FILE`` (so a user's ~/.jobflow.yaml is not used), one OpenMP thread for
    subprocesses, and drops ``$MONGOMOCK_SERVERSTORE_FILE``. Returns the variables set.
    ``checkpoints``: folder to keep the tiny checkpoints in (share one across tests: building
    a model takes seconds).
    """
    folder = Path(folder)
    g, p = tiny_checkpoints(checkpoints or folder / "checkpoints")
    env = {
        "DAO_STORE_DIR": str(folder / "store"),
        "DAO_G_MODEL": g,
        "DAO_P_MODEL": p,
        "JOBFLOW_CONFIG_FILE": str(folder / "no-jobflow-config.yaml"),
        # Tiny structures gain nothing from threads, and oversubscribed cores slow CHGNet
        # down many times over.
        "OMP_NUM_THREADS": "1",
    }
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("JOBFLOW_JOB_STORE", raising=False)
    monkeypatch.delenv("MONGOMOCK_SERVERSTORE_FILE", raising=False)
    return env


def nan_structure() -> Structure:
    """A 4-atom NaCl cell with a NaN coordinate: any relaxation of it raises."""
    import numpy as np
    from pymatgen.core import Lattice, Structure

    return Structure(
        Lattice.cubic(5.6),
        ["Na", "Na", "Cl", "Cl"],
        [[0, 0, 0], [0.5, 0.5, 0], [0.5, 0, 0], [0, 0.5, np.nan]],
    )


def single_threaded() -> AbstractContextManager[None]:
    """Context manager: one BLAS/OpenMP thread (threadpoolctl, when installed) and one torch
    thread. On a busy 2-core machine, threaded 3x3 LAPACK calls in ASE's cell filter and
    CHGNet's small kernels otherwise spin and run 10x slower."""
    import contextlib

    import torch

    @contextlib.contextmanager
    def _limit() -> Iterator[None]:
        old = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            try:
                from threadpoolctl import threadpool_limits
            except ImportError:
                yield
            else:
                with threadpool_limits(1):
                    yield
        finally:
            torch.set_num_threads(old)

    return _limit()
