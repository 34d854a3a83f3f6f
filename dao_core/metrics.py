"""CSP metrics under the DiffCSP protocol (method doc section 7), so numbers compare with the
published tables: validity (structure + SMACT composition), StructureMatcher match rate and
normalised RMSE, with 1 sample or k samples per test crystal.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from functools import cache, lru_cache
from math import gcd

import numpy as np
import smact
from pymatgen.analysis.structure_matcher import StructureMatcher
from pymatgen.core import Composition, Element, Structure

from dao_core.data.files import mp_context
from dao_core.errors import DAOInputError

MATCHER_KWARGS = {"stol": 0.5, "angle_tol": 10, "ltol": 0.3}  # DiffCSP; other settings default
MIN_DISTANCE = 0.5  # Å
MIN_VOLUME = 0.1  # Å^3
MAX_OX_COMBINATIONS = 10**7  # DiffCSP gives up (invalid) beyond this many oxidation-state combos
PARALLEL_MIN_CRYSTALS = 32  # below this a process pool costs more than it saves


# --- validity -----------------------------------------------------------------------------------


def structure_validity(structure: Structure | None, cutoff: float = MIN_DISTANCE) -> bool:
    """Min periodic interatomic distance >= ``cutoff`` Å and volume >= 0.1 Å^3 (DiffCSP).

    Non-finite cells are invalid. A 1-atom cell also checks its shortest lattice vector (the
    distance to its own periodic image), which DiffCSP's distance matrix does not see.
    """
    if structure is None or len(structure) == 0:
        return False
    matrix = np.asarray(structure.lattice.matrix)
    if not (np.isfinite(matrix).all() and np.isfinite(structure.frac_coords).all()):
        return False
    volume = abs(float(np.linalg.det(matrix)))
    if not volume >= MIN_VOLUME:
        return False
    if len(structure) == 1:
        lengths = np.linalg.norm(structure.lattice.get_lll_reduced_lattice().matrix, axis=1)
        return bool(lengths.min() >= cutoff)
    dist = np.array(structure.distance_matrix, dtype=float)
    np.fill_diagonal(dist, np.inf)
    return bool(dist.min() >= cutoff)


def _elements_and_counts(
    composition: Composition | Structure | Sequence[int] | np.ndarray,
) -> tuple[tuple[str, ...], tuple[int, ...]]:
    """Element symbols sorted by Z and gcd-reduced integer counts (as DiffCSP's Crystal)."""
    if isinstance(composition, Structure):
        composition = composition.composition
    if isinstance(composition, Composition):
        items = sorted(
            ((Element(str(getattr(el, "element", el))).Z, amt) for el, amt in composition.items()),
        )
        zs = np.array([z for z, _ in items], dtype=np.int64)
        amounts = np.array([a for _, a in items], dtype=float)
        if np.any(np.abs(amounts - np.round(amounts)) > 1e-6):
            raise DAOInputError(
                f"composition {composition.formula!r} has non-integer amounts; "
                "composition validity needs whole atom counts"
            )
        counts = np.round(amounts).astype(np.int64)
    else:
        numbers = np.asarray(composition, dtype=np.int64).reshape(-1)
        if len(numbers) == 0:
            raise DAOInputError("composition validity of an empty composition")
        zs, counts = np.unique(numbers, return_counts=True)
    if len(zs) == 0 or zs.min() < 1:
        raise DAOInputError(f"invalid atomic numbers {zs.tolist()}")
    divisor = 0
    for c in counts.tolist():
        divisor = gcd(divisor, int(c))
    symbols = tuple(Element.from_Z(int(z)).symbol for z in zs)
    return symbols, tuple(int(c) // divisor for c in counts)


def _legacy_eneg_test(ox_states: Sequence[int], enegs: Sequence[float | None]) -> bool:
    """smact 2.x ``pauling_test`` as DiffCSP ran it: a comparison with a missing
    electronegativity raised TypeError, which DiffCSP caught as "passes"."""
    for (ox1, e1), (ox2, e2) in itertools.combinations(zip(ox_states, enegs, strict=True), 2):
        if (ox1 > 0 and ox2 < 0) or (ox1 < 0 and ox2 > 0):
            if e1 is None or e2 is None:
                return True
            if (ox1 > 0 and e1 >= e2) or (ox1 < 0 and e1 <= e2):
                return False
    return True


@cache
def _smact_element(symbol: str) -> smact.Element:
    return smact.Element(symbol)  # building one reads smact's data tables: slow, so cached


@lru_cache(maxsize=65536)
def _smact_valid(symbols: tuple[str, ...], counts: tuple[int, ...]) -> bool:
    """DiffCSP's ``smact_validity`` (use_pauling_test=True, include_alloys=True)."""
    if len(set(symbols)) == 1:
        return True
    if all(s in smact.metals for s in symbols):
        return True
    elements = [_smact_element(s) for s in symbols]
    # Elements with no known oxidation states (He, Ne, Ar) cannot be charge-balanced.
    ox = [list(e.oxidation_states or []) for e in elements]
    enegs = [e.pauling_eneg for e in elements]
    if any(len(o) == 0 for o in ox):
        return False
    if int(np.prod([len(o) for o in ox], dtype=np.int64)) > MAX_OX_COMBINATIONS:
        return False
    # Charge neutrality of every oxidation-state combination at the exact (reduced) counts, by
    # broadcasting (one axis per element) instead of itertools.product; equivalent to DiffCSP's
    # smact.neutral_ratios(ox_states, stoichs=[(c,) ...]) per combination.
    arrays = [np.asarray(o, dtype=np.int64) for o in ox]
    charge = np.zeros((1,) * len(arrays), dtype=np.int64)
    for axis, (o, c) in enumerate(zip(arrays, counts, strict=True)):  # per element, not atom
        shape = [1] * len(arrays)
        shape[axis] = len(o)
        charge = charge + (o * c).reshape(shape)
    hits = np.nonzero(charge == 0)  # C order = itertools.product order
    neutral = np.stack([o[i] for o, i in zip(arrays, hits, strict=True)], axis=1)  # (M, E)
    if len(neutral) == 0:
        return False
    if any(e is None for e in enegs):
        return any(_legacy_eneg_test(row.tolist(), enegs) for row in neutral)
    # Pauling test, vectorised over combos: no cation at least as electronegative as an anion.
    eneg = np.asarray(enegs, dtype=float)
    cation, anion = neutral > 0, neutral < 0
    bad = cation[:, :, None] & anion[:, None, :] & (eneg[:, None] >= eneg[None, :])[None]
    return bool((~bad.any(axis=(1, 2))).any())


def composition_validity(
    composition: Composition | Structure | Sequence[int] | np.ndarray,
) -> bool:
    """SMACT charge neutrality + Pauling electronegativity test, as DiffCSP's ``smact_validity``:
    single elements and all-metal compositions pass; counts are reduced by their gcd."""
    return _smact_valid(*_elements_and_counts(composition))


def is_valid(structure: Structure | None) -> bool:
    """Structure and composition validity (DiffCSP's ``Crystal.valid``)."""
    return structure_validity(structure) and composition_validity(structure)  # type: ignore[arg-type]


# --- matching -----------------------------------------------------------------------------------


@lru_cache(maxsize=1)
def _matcher() -> StructureMatcher:
    return StructureMatcher(**MATCHER_KWARGS)


def match(pred: Structure | None, gt: Structure) -> float | None:
    """Normalised RMS distance ``get_rms_dist(pred, gt)[0]`` or None when they do not match."""
    if pred is None:
        return None
    try:
        result = _matcher().get_rms_dist(pred, gt)
    except Exception:  # DiffCSP counts any matcher failure as "no match"
        return None
    return None if result is None else float(result[0])


@dataclass
class CSPMetrics:
    match_rate: float  # matched / all test crystals
    rmse: float | None  # mean over matched crystals (min over matched samples); None if none
    n: int  # test crystals
    n_matched: int
    n_samples: int  # samples per crystal (k)
    valid_fraction: float  # valid predictions / all predictions (failed samples count invalid)
    rms_per_crystal: list[float | None] = field(default_factory=list, repr=False)

    def to_dict(self) -> dict[str, float | int | None]:
        return {
            "match_rate": self.match_rate,
            "rmse": self.rmse,
            "n": self.n,
            "n_matched": self.n_matched,
            "n_samples": self.n_samples,
            "valid_fraction": self.valid_fraction,
        }


def _evaluate_crystal(
    args: tuple[Sequence[Structure | None], Structure, bool],
) -> tuple[float | None, int]:
    """(best rms or None, number of valid predictions) for one test crystal."""
    preds, gt, one_sample = args
    valid = [is_valid(p) for p in preds]
    if one_sample and not is_valid(gt):  # 1-sample rule: the ground truth must be valid too
        return None, sum(valid)
    rms = [match(p, gt) for p, ok in zip(preds, valid, strict=True) if ok]
    rms = [r for r in rms if r is not None]
    return (min(rms) if rms else None), sum(valid)


def evaluate_csp(
    predictions: Sequence[Sequence[Structure | None]],
    ground_truth: Sequence[Structure],
    n_jobs: int | None = None,
) -> CSPMetrics:
    """Match rate / RMSE / validity under the DiffCSP protocol.

    ``predictions[i]`` holds the samples for ``ground_truth[i]`` (None = a failed sample, which
    counts as unmatched and invalid). With exactly one sample per crystal a pair counts only if
    prediction and ground truth are both valid; with more, only the predictions' validity is
    checked and a crystal's RMSE is the minimum over its matched samples. Matching runs in a
    process pool of ``n_jobs`` workers (default: all CPUs; 1 = in this process).
    """
    if len(predictions) != len(ground_truth):
        raise DAOInputError(
            f"{len(predictions)} prediction lists for {len(ground_truth)} ground-truth crystals"
        )
    n = len(ground_truth)
    if n == 0:
        raise DAOInputError("no test crystals to evaluate")
    sample_counts = [len(p) for p in predictions]
    one_sample = all(k == 1 for k in sample_counts)
    tasks = [(list(p), g, one_sample) for p, g in zip(predictions, ground_truth, strict=True)]
    workers = min(n_jobs or os.cpu_count() or 1, n)
    if workers < 2 or n < PARALLEL_MIN_CRYSTALS:
        results = [_evaluate_crystal(t) for t in tasks]
    else:
        chunk = max(1, n // (workers * 8))  # small chunks: match times vary a lot per crystal
        with ProcessPoolExecutor(workers, mp_context=mp_context()) as pool:
            results = list(pool.map(_evaluate_crystal, tasks, chunksize=chunk))
    rms = [r for r, _ in results]
    matched = np.array([r for r in rms if r is not None], dtype=float)
    n_valid = sum(v for _, v in results)
    total = sum(sample_counts)
    return CSPMetrics(
        match_rate=len(matched) / n,
        rmse=float(matched.mean()) if len(matched) else None,
        n=n,
        n_matched=len(matched),
        n_samples=max(sample_counts),
        valid_fraction=n_valid / total if total else 0.0,
        rms_per_crystal=rms,
    )
