"""When a ranked polymorph cannot be taken as a real structure (ranking, tables and plots).

The one place that decides it: :func:`classify` gives each polymorph its kind of flag, which
the ranking stores (``RankedPolymorph.flag``) and the report only translates.
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from typing import Literal

# Known polymorphs sit within a few hundred meV/atom of the ground state (MP's metastable
# structures: almost all below 0.2 eV/atom above the hull); far above the best candidate, a
# relaxed result is a trapped or broken cell, whatever its relaxation status.
MAX_E_ABOVE_BEST = 0.5  # eV/atom
# An unconverged relaxation far below every converged one has left the potential's training
# domain (CHGNet has been seen to run a GdInPd cell to -87 eV/atom); it is no ground state.
MAX_E_BELOW_CONVERGED = 0.5  # eV/atom
# The reference energy is chosen against the median of the converged energies. Relaxed cells
# of one composition, trapped ones included, lie within about 1 eV/atom of each other (a
# fraction of the cohesive energy); the margin is wider than that, so that a pool in which
# most cells are trapped still keeps its ground state, while a cell the potential collapsed
# (tens of eV/atom lower) cannot become the reference even when its relaxation converged.
MAX_E_BELOW_MEDIAN = 2.0  # eV/atom

Flag = Literal["unconverged", "high_energy", "potential_failed"]
# Ranking tiers: plausible first, then flagged cells, then those the potential failed on.
TIER: dict[Flag | None, int] = {
    None: 0,
    "unconverged": 1,
    "high_energy": 1,
    "potential_failed": 2,
}


def reference_energy(energies: Sequence[float], converged: Sequence[bool]) -> float:
    """The energy (eV/atom) that ``e_above_best`` is measured from: the lowest converged
    energy not more than MAX_E_BELOW_MEDIAN below the median of the converged ones (of all
    of them when none converged), so that a lone collapsed cell cannot be the reference."""
    pool = sorted(e for e, ok in zip(energies, converged, strict=True) if ok) or sorted(energies)
    if not pool:
        return 0.0
    floor = statistics.median(pool) - MAX_E_BELOW_MEDIAN
    reference = min(e for e in pool if e >= floor)
    # Energies just below it join it (a continuous landscape, not a failure): every one left
    # below the reference is then more than MAX_E_BELOW_CONVERGED lower and flagged as failed.
    for e in reversed([e for e in pool if e < reference]):
        if reference - e > MAX_E_BELOW_CONVERGED:
            break
        reference = e
    return reference


def classify(
    e_above_best: float, converged: bool, any_converged: bool = True
) -> tuple[Flag, str] | None:
    """The kind of flag of a ranked polymorph and why, or None when it is plausible.
    ``e_above_best`` is measured from :func:`reference_energy`; ``any_converged`` says
    whether that is a converged polymorph (only the wording depends on it)."""
    if e_above_best > MAX_E_ABOVE_BEST:
        return "high_energy", f"{e_above_best:.2f} eV/atom above the best (> {MAX_E_ABOVE_BEST})"
    if e_above_best < -MAX_E_BELOW_CONVERGED:
        below = (
            "the other converged polymorphs"
            if converged
            else "every converged polymorph"
            if any_converged
            else "the other relaxed polymorphs"
        )
        return "potential_failed", (
            f"{-e_above_best:.2f} eV/atom below {below}: the potential failed on this cell"
        )
    if not converged:
        return "unconverged", "relaxation did not converge"
    return None


def implausibility(e_above_best: float, converged: bool) -> str | None:
    """Why a ranked polymorph cannot be taken as a real structure, or None (the message of
    :func:`classify`). ``e_above_best`` is measured from :func:`reference_energy`."""
    flagged = classify(e_above_best, converged)
    return None if flagged is None else flagged[1]
