"""One crystal as arrays (:class:`CrystalRecord`), canonical cells and right-handed lattices.

A crystal is (A, L, X): atomic numbers, a 3x3 lattice with one lattice vector per row (Å) and
fractional coordinates in [0, 1).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from pymatgen.core import Lattice, Structure

from dao_core.errors import DAOInputError


def _wrap(frac: np.ndarray) -> np.ndarray:
    """Fractional coordinates in [0, 1): x % 1 can round to exactly 1.0 for tiny negatives."""
    frac = np.mod(frac, 1.0)
    frac[frac >= 1.0] = 0.0
    return frac


def canonicalize(structure: Structure) -> Structure:
    """Niggli-reduce the given cell and rebuild the lattice from (a, b, c, α, β, γ), as
    CDVAE/DiffCSP preprocess (no primitive-cell search); coordinates wrapped into [0, 1)."""
    reduced = structure.get_reduced_structure()  # Niggli by default
    lattice = Lattice.from_parameters(*reduced.lattice.parameters)
    return Structure(
        lattice,
        reduced.species,
        _wrap(np.array(reduced.frac_coords, dtype=np.float64)),
        coords_are_cartesian=False,
    )


@dataclass
class CrystalRecord:
    """One crystal as arrays (cheap to pickle, cache and batch)."""

    atomic_numbers: np.ndarray  # (N,) int64
    frac: np.ndarray  # (N, 3) float32 in [0, 1)
    lattice: np.ndarray  # (3, 3) float32, rows = lattice vectors (Å)
    energy: float | None = None
    material_id: str = ""

    @property
    def num_atoms(self) -> int:
        return len(self.atomic_numbers)

    def to_structure(self) -> Structure:
        return Structure(
            Lattice(np.asarray(self.lattice, dtype=np.float64)),
            [int(z) for z in self.atomic_numbers],
            np.asarray(self.frac, dtype=np.float64),
            coords_are_cartesian=False,
        )

    @classmethod
    def from_structure(
        cls,
        structure: Structure,
        energy: float | None = None,
        material_id: str = "",
        canonical: bool = True,
    ) -> CrystalRecord:
        return record_from_structure(structure, energy, material_id, canonical)


def record_from_structure(
    structure: Structure,
    energy: float | None = None,
    material_id: str = "",
    canonical: bool = True,
) -> CrystalRecord:
    """Arrays of an ordered structure (Niggli-canonicalised unless ``canonical=False``)."""
    if not structure.is_ordered:
        raise DAOInputError(
            f"structure {material_id or structure.composition.formula!r} is disordered "
            "(partial occupancies); only ordered structures are supported"
        )
    if canonical:
        structure = canonicalize(structure)
    numbers = np.array([site.specie.Z for site in structure], dtype=np.int64)
    return CrystalRecord(
        atomic_numbers=numbers,
        # Wrap after the cast: 0.99999999 becomes 1.0 in float32.
        frac=_wrap(np.array(structure.frac_coords, dtype=np.float32)),
        lattice=np.array(structure.lattice.matrix, dtype=np.float32),
        energy=None if energy is None else float(energy),
        material_id=str(material_id),
    )


def right_handed(lattice: np.ndarray, frac: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The same crystals with right-handed lattices (det > 0), for (..., 3, 3) lattices and
    (..., N, 3) fractional coordinates.

    DAO-G is reflection-invariant, so about half its cells come out left-handed. That is the same
    crystal, but CHGNet divides its stress by the *signed* volume, so a left-handed cell relaxes
    the wrong way and collapses. Negating all three vectors and the fractional coordinates keeps
    every Cartesian position and makes the determinant positive.
    """
    flip = np.linalg.det(lattice) < 0
    sign = np.where(flip, -1.0, 1.0)[..., None, None]
    frac = np.where(sign > 0, frac, np.remainder(-frac, 1.0))
    return lattice * sign, frac


def right_handed_structure(structure: Structure) -> Structure:
    """``structure`` itself if its lattice is right-handed, else the same crystal re-expressed
    in a right-handed cell (see :func:`right_handed`)."""
    if np.linalg.det(structure.lattice.matrix) >= 0:
        return structure
    lattice, frac = right_handed(structure.lattice.matrix, structure.frac_coords)
    return Structure(
        Lattice(lattice), structure.species, frac, site_properties=structure.site_properties
    )
