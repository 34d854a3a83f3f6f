"""DAO-P as an ASE calculator: energies, forces and stress of any ``ase.Atoms`` (an MD run, an
ASE optimiser, a phonon code), from the clean-step energy head.

Physical only when the model was trained on a physical label (eV/atom, such as the uniform
CHGNet formation energy of docs/training.md); a DAO-P on standardised labels gives relative
energies, which the calculator refuses unless asked for (``relative=True``).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from ase import Atoms
from ase.calculators.calculator import Calculator, all_changes
from ase.stress import full_3x3_to_voigt_6_stress
from ase.units import GPa

from dao_core.checkpoint import load_model
from dao_core.dao import DAOModel
from dao_core.data import CrystalBatch
from dao_core.errors import DAOInputError


class DAOPCalculator(Calculator):
    """ASE calculator for a DAO-P checkpoint (bundled name, folder or loaded model)."""

    implemented_properties = ["energy", "free_energy", "forces", "stress"]

    def __init__(
        self, model: str | DAOModel = "dao-p-base", device: str | None = None,
        relative: bool = False, **kwargs: Any,
    ) -> None:  # fmt: skip
        super().__init__(**kwargs)
        self.model = load_model(model, device=device)
        if self.model.kind != "dao-p":
            raise DAOInputError(f"{self.model.name or model} is not a DAO-P model")
        if self.model.label.unit != "eV/atom" and not relative:
            raise DAOInputError(
                f"{self.model.name or model} predicts {self.model.label.name!r} in "
                f"{self.model.label.unit!r}, not eV/atom: pass relative=True to use it anyway"
            )

    def calculate(
        self,
        atoms: Atoms | None = None,
        properties: list[str] | None = None,
        system_changes: list[str] = all_changes,
    ) -> None:
        super().calculate(atoms, properties, system_changes)
        atoms = self.atoms
        if not atoms.pbc.all():
            raise DAOInputError("DAO-P is a crystal model: the Atoms must be periodic in 3D")
        device = self.model.device
        dtype = next(self.model.parameters()).dtype  # float64 models give float64 derivatives
        lattice = torch.tensor(np.asarray(atoms.cell), dtype=dtype, device=device)
        frac = torch.tensor(atoms.get_scaled_positions(wrap=True), dtype=dtype)
        batch = CrystalBatch(
            torch.tensor(atoms.numbers, dtype=torch.long, device=device)[None],
            frac.to(device)[None],
            lattice[None],
            torch.ones(1, len(atoms), dtype=torch.bool, device=device),
        )
        e_atom, forces, stress = self.model.energy_forces_stress(batch)
        energy = float(e_atom[0]) * len(atoms)
        # energy_forces_stress gives (1/V) dE/dstrain, ASE's sign, in GPa; ASE wants eV/Å^3.
        stress_ev = stress[0].double().cpu().numpy() * GPa
        self.results = {
            "energy": energy,
            "free_energy": energy,
            "forces": forces[0].double().cpu().numpy(),
            "stress": full_3x3_to_voigt_6_stress(stress_ev),
        }
