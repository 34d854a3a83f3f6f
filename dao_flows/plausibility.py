"""When a ranked polymorph cannot be taken as a real structure (ranking, tables and plots)."""

from __future__ import annotations

# Known polymorphs sit within a few hundred meV/atom of the ground state (MP's metastable
# structures: almost all below 0.2 eV/atom above the hull); far above the best candidate, a
# relaxed result is a trapped or broken cell, whatever its relaxation status.
MAX_E_ABOVE_BEST = 0.5  # eV/atom
# An unconverged relaxation far below every converged one has left the potential's training
# domain (CHGNet has been seen to run a GdInPd cell to -87 eV/atom); it is no ground state.
MAX_E_BELOW_CONVERGED = 0.5  # eV/atom


def implausibility(e_above_best: float, converged: bool) -> str | None:
    """Why a ranked polymorph cannot be taken as a real structure, or None. ``e_above_best``
    is measured from the best converged polymorph."""
    if e_above_best > MAX_E_ABOVE_BEST:
        return f"{e_above_best:.2f} eV/atom above the best (> {MAX_E_ABOVE_BEST})"
    if e_above_best < -MAX_E_BELOW_CONVERGED:
        return (
            f"{-e_above_best:.2f} eV/atom below every converged polymorph: the potential "
            "failed on this cell"
        )
    if not converged:
        return "relaxation did not converge"
    return None
