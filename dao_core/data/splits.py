"""Recorded train/validation splits (material ids, seeded) and their named held-out subsets."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from dao_core.errors import DAOInputError


def split_records(n: int, val_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Sorted (train, val) index arrays; deterministic for ``seed`` (numpy Generator)."""
    if n < 0:
        raise DAOInputError(f"number of records must be >= 0, got {n}")
    if not 0.0 <= val_fraction < 1.0:
        raise DAOInputError(f"val_fraction must be in [0, 1), got {val_fraction}")
    n_val = int(round(n * val_fraction))
    if val_fraction > 0 and n > 1:
        n_val = min(max(n_val, 1), n - 1)  # both sides non-empty when a split is asked for
    perm = np.random.default_rng(seed).permutation(n)
    return np.sort(perm[n_val:]), np.sort(perm[:n_val])


def _plain(ids: Sequence[Any] | np.ndarray) -> list[Any]:
    return [i.item() if isinstance(i, np.generic) else i for i in list(ids)]


def save_split(
    path: str | Path,
    ids_train: Sequence[Any] | np.ndarray | None,
    ids_val: Sequence[Any] | np.ndarray,
    seed: int,
    source: str | Sequence[str],
    val_sets: Mapping[str, Sequence[Any]] | None = None,
) -> Path:
    """Write a split (material ids or row indices) as JSON so it can be committed.

    ``ids_train=None`` records only the held-out ids: everything else in ``source`` trains
    (compact for large corpora). ``val_sets`` names subsets of the validation ids.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    doc: dict[str, Any] = {
        "seed": int(seed),
        "source": source if isinstance(source, str) else list(source),
        "n_val": len(ids_val),
    }
    if ids_train is not None:
        doc |= {"n_train": len(ids_train), "train": _plain(ids_train)}
    doc["val"] = _plain(ids_val)
    if val_sets:
        doc["val_sets"] = {k: _plain(v) for k, v in val_sets.items()}
    path.write_text(json.dumps(doc, indent=1) + "\n")
    return path


def load_split(path: str | Path) -> dict[str, Any]:
    """The dict written by :func:`save_split` (keys seed, source, val, and train if recorded)."""
    path = Path(path)
    try:
        doc = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise DAOInputError(f"cannot read split file {str(path)!r}: {exc}") from exc
    if not isinstance(doc, dict) or not isinstance(doc.get("val"), list):
        raise DAOInputError(f"split file {str(path)!r} lacks a 'val' list")
    return doc


def held_out_ids(spec: str | Path) -> set[Any]:
    """The validation ids of a split file, or of one named subset: ``split.json[:NAME]``."""
    path, _, name = str(spec).partition(":")
    doc = load_split(path)
    if not name:
        return set(doc["val"])
    sets = doc.get("val_sets", {})
    if name not in sets:
        raise DAOInputError(
            f"split file {path!r} has no validation set {name!r} "
            f"(it has: {', '.join(sorted(sets)) or 'none'})"
        )
    return set(sets[name])
