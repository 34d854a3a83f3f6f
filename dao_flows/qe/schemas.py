"""The document a ``pw.x`` job returns: stored as the job output, whether or not it worked.

Units: energies eV, forces eV/Angstrom, stress GPa with the QE/VASP sign convention
(positive = compressive: the cell wants to expand), lengths Angstrom.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field
from pymatgen.core import Structure


class QEVerificationDoc(BaseModel):
    """Result of one ``pw.x`` calculation (successful or not)."""

    model_config = ConfigDict(arbitrary_types_allowed=True)

    formula: str = Field(description="reduced formula of the input structure")
    nsites: int
    calculation: str
    success: bool = Field(description="pw.x finished, parsed, and converged")
    converged: bool = Field(description="SCF converged (and, for relaxations, geometry too)")
    scf_converged: bool = False
    relax_converged: bool | None = Field(None, description="None for 'scf'")
    failure_reason: str | None = None
    structure: Structure | None = Field(None, description="final (relaxed) structure")
    input_structure: Structure
    energy: float | None = Field(None, description="total energy, eV ('!' line of pw.x)")
    energy_per_atom: float | None = Field(None, description="eV/atom")
    initial_energy: float | None = Field(None, description="first ionic step, eV")
    forces: list[list[float]] | None = Field(None, description="eV/Angstrom, per site")
    max_force: float | None = Field(None, description="eV/Angstrom")
    stress: list[list[float]] | None = Field(
        None, description="GPa, 3x3, QE sign convention (positive = compressive)"
    )
    pressure: float | None = Field(None, description="GPa, trace(stress)/3")
    scf_iterations: int | None = Field(None, description="SCF iterations of the last cycle")
    total_scf_iterations: int | None = None
    ionic_steps: int | None = None
    wall_time_s: float | None = Field(None, description="measured around the pw.x process")
    pw_wall_time_s: float | None = Field(None, description="pw.x's own WALL time")
    pw_version: str | None = None
    return_code: int | None = None
    command: list[str] | None = None
    ecutwfc: float | None = Field(None, description="Ry")
    ecutrho: float | None = Field(None, description="Ry")
    kpts: list[int] | None = None
    pseudo_dir: str | None = None
    pseudopotentials: dict[str, str] | None = None
    cutoff_source: dict[str, str] | None = None
    settings: dict[str, Any] = Field(description="PWSettings used (after defaults)")
    input_parameters: dict[str, Any] | None = Field(None, description="pw.x namelists")
    dir_name: str
    stdout_file: str | None = None
    completed_at: str
