"""Inputs shared by the CSP workflow and relaxation tests."""

from __future__ import annotations

from pymatgen.core import Lattice, Structure

# CHGNet's ranking alone (refine_top=0); the re-ranking has its own test below.
SMALL = dict(
    n=2,
    n_random=3,
    n_template=0,
    steps=20,
    formula_units=2,
    seed=11,
    relax_steps=25,
    fmax=0.1,
    refine_top=0,
)


def rocksalt(a: float = 5.64) -> Structure:
    return Structure.from_spacegroup(
        "Fm-3m", Lattice.cubic(a), ["Na", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]]
    )


def cscl(a: float = 3.4) -> Structure:
    return Structure(Lattice.cubic(a), ["Na", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]])


def primitive_rocksalt(a: float) -> Structure:
    """Rocksalt NaCl as its 2-atom primitive cell, conventional lattice constant ``a``."""
    return rocksalt(a).get_primitive_structure()


def caesium_chloride(a: float) -> Structure:
    return Structure(Lattice.cubic(a), ["Cs", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]])
