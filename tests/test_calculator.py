"""DAO-P as an ASE calculator: forces and stress are the derivatives of its energy, as ASE's
finite differences see them; non-physical labels and non-periodic atoms are refused."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from ase.build import bulk

from dao_core.calculator import DAOPCalculator
from dao_core.dao import DAOModel, EnergyLabel
from dao_core.errors import DAOInputError
from dao_core.model import CrysformerConfig


def tiny_dao_p(unit: str = "eV/atom") -> DAOModel:
    torch.manual_seed(0)
    label = EnergyLabel("chgnet_formation_energy_per_atom", unit, mean=-1.0, std=0.5)
    return DAOModel("dao-p", CrysformerConfig.preset("tiny"), label).eval()


def test_forces_and_stress_match_ase_finite_differences() -> None:
    """In float64, so the finite differences are not float32 rounding noise (a 1e-4 strain
    step on a float32 energy leaves ~3e-5 eV/A^3 of noise, more than the stress tolerance)."""
    atoms = bulk("NaCl", "rocksalt", a=5.6, cubic=True)
    atoms.rattle(0.05, seed=1)
    atoms.set_cell(atoms.cell * [1.0, 1.02, 0.99], scale_atoms=True)
    atoms.calc = DAOPCalculator(tiny_dao_p().double(), device="cpu")
    energy = atoms.get_potential_energy()
    assert np.isfinite(energy)
    forces = atoms.get_forces()
    numeric = atoms.calc.calculate_numerical_forces(atoms, d=1e-3)
    np.testing.assert_allclose(forces, numeric, atol=2e-3 * max(1.0, np.abs(numeric).max()))
    stress = atoms.get_stress()
    numeric_stress = atoms.calc.calculate_numerical_stress(atoms, d=1e-4)
    np.testing.assert_allclose(
        stress, numeric_stress, atol=2e-3 * max(1e-2, np.abs(numeric_stress).max())
    )


def test_refuses_relative_labels_and_molecules() -> None:
    with pytest.raises(DAOInputError, match="pass relative=True"):
        DAOPCalculator(tiny_dao_p("std. units"), device="cpu")
    DAOPCalculator(tiny_dao_p("std. units"), device="cpu", relative=True)
    atoms = bulk("Si")
    atoms.pbc = [True, True, False]
    atoms.calc = DAOPCalculator(tiny_dao_p(), device="cpu")
    with pytest.raises(DAOInputError, match="periodic"):
        atoms.get_potential_energy()
