"""Composition parsing: a formula (and formula units) -> the atomic numbers of one cell."""

from __future__ import annotations

import re
from collections.abc import Sequence

import numpy as np
from pymatgen.core import Composition, Element

from dao_core.elements import MAX_Z
from dao_core.errors import DAOInputError

MAX_ATOMS = 100  # the largest cell DAO-G samples and trains on
_ZERO_AMOUNT = re.compile(r"([A-Z][a-z]?)0+(?:\.0*)?(?![\d.])")


def parse_composition(
    formula: str, formula_units: int | None = None, max_atoms: int = MAX_ATOMS
) -> np.ndarray:
    """Atomic numbers (int64, one per atom, grouped by element in order of appearance).

    ``formula_units`` multiplies the formula as written: ("CsV3Sb5", 2) -> 18 atoms.
    """
    if not isinstance(formula, str) or not formula.strip():
        raise DAOInputError(f"empty formula {formula!r}: give a chemical formula such as 'NaCl'")
    formula = formula.strip()
    if formula_units is None:
        formula_units = 1
    if isinstance(formula_units, bool) or not isinstance(formula_units, int | np.integer):
        raise DAOInputError(f"formula_units must be a whole number, got {formula_units!r}")
    if formula_units < 1:
        raise DAOInputError(f"formula_units must be at least 1, got {formula_units}")
    try:
        comp = Composition(formula)
    except Exception as exc:  # pymatgen raises ValueError/KeyError/... for unparseable strings
        raise DAOInputError(f"cannot parse formula {formula!r}: {exc}") from exc
    # pymatgen silently drops zero amounts ("H0O" -> O); an explicit 0 is almost surely a typo.
    zero = _ZERO_AMOUNT.search(formula)
    if zero:
        raise DAOInputError(f"formula {formula!r} gives element {zero.group(1)} an amount of 0")
    if len(comp) == 0:
        raise DAOInputError(f"formula {formula!r} contains no elements")
    numbers, counts = [], []
    for species, amount in comp.items():
        if not isinstance(species, Element):  # DummySpecies ("Xx") or an ion ("Fe2+")
            symbol = getattr(species, "symbol", str(species))
            raise DAOInputError(f"unknown element {symbol!r} in formula {formula!r}")
        if species.Z > MAX_Z:
            raise DAOInputError(
                f"element {species.symbol} (Z={species.Z}) in formula {formula!r} is beyond "
                f"Z={MAX_Z}, which the models do not support"
            )
        if abs(amount - round(amount)) > 1e-8 or round(amount) < 1:
            raise DAOInputError(
                f"element {species.symbol} has a non-integer amount {amount:g} in formula "
                f"{formula!r}; give whole atom counts (e.g. 'Fe2O3', not 'FeO1.5')"
            )
        numbers.append(species.Z)
        counts.append(int(round(amount)) * int(formula_units))
    total = int(sum(counts))
    if total > max_atoms:
        raise DAOInputError(
            f"formula {formula!r} x {formula_units} formula unit(s) has {total} atoms; "
            f"at most {max_atoms} atoms are supported"
        )
    return np.repeat(np.asarray(numbers, dtype=np.int64), counts)


def reduced_formula(numbers: Sequence[int] | np.ndarray) -> str:
    """The reduced formula of a cell's atomic numbers, in any order: [11, 17, 11, 17] -> NaCl."""
    z, counts = np.unique(np.asarray(numbers, dtype=np.int64), return_counts=True)
    amounts = {Element.from_Z(int(a)): int(c) for a, c in zip(z, counts, strict=True)}
    return Composition(amounts).reduced_formula
