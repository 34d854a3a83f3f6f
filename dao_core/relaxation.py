"""Dataset relaxation (method doc, section 6): move mildly unstable training structures toward
DAO-P minima before DAO-G Stage II; stable and very unstable ones stay as they are."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

import numpy as np

from dao_core.dao import DAOModel
from dao_core.data import CrystalBatch, CrystalRecord

MAX_VOLUME_CHANGE = (0.7, 1.3)


def in_window(records: Sequence[CrystalRecord], window: tuple[float, float] | None) -> np.ndarray:
    """Which records to relax: label in (low, high]; every labelled record when no window."""
    energy = np.array([np.nan if r.energy is None else r.energy for r in records], dtype=float)
    if window is None:
        return np.isfinite(energy)
    low, high = window
    return np.isfinite(energy) & (energy > low) & (energy <= high)


def relax_records(
    model: DAOModel,
    records: Sequence[CrystalRecord],
    window: tuple[float, float] | None = (0.08, 0.5),
    steps: int = 5,
    lr: float = 1.0,
    batch_size: int = 100,
) -> tuple[list[CrystalRecord], np.ndarray]:
    """Relaxed copies of ``records`` (others unchanged) and a mask of those that moved."""
    selected = np.flatnonzero(in_window(records, window))
    out = list(records)
    moved = np.zeros(len(records), dtype=bool)
    # Similar sizes per batch: less padding, and L-BFGS line searches shared by like crystals.
    selected = selected[np.argsort([len(records[i].atomic_numbers) for i in selected])]
    for start in range(0, len(selected), batch_size):
        idx = selected[start : start + batch_size]
        batch = CrystalBatch.from_records([records[i] for i in idx]).to(model.device)
        relaxed = model.relax(batch, steps=steps, lr=lr)
        frac, lattice = relaxed.frac.float().cpu().numpy(), relaxed.lattice.float().cpu().numpy()
        for row, i in enumerate(idx):
            n = len(records[i].atomic_numbers)
            ratio = abs(np.linalg.det(lattice[row]) / np.linalg.det(records[i].lattice))
            # A learned surface can run away; keep the original when the step is not sane.
            if np.isfinite(frac[row]).all() and MAX_VOLUME_CHANGE[0] < ratio < MAX_VOLUME_CHANGE[1]:
                out[i] = replace(records[i], frac=frac[row, :n], lattice=lattice[row])
                moved[i] = True
    return out, moved
