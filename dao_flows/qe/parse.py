"""Reading ``pw.out``: what ran, whether it converged, and why not.

ASE reads the physics (structure, energy, forces, stress of every ionic step); pymatgen's
``PWOutput`` pattern reader the status lines ASE ignores (version, SCF iterations,
convergence and error messages, timings). The verdict is one failure reason or None.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import numpy as np
from ase import units

from dao_flows.qe.inputs import PWSettings, atoms_to_structure

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


def qe_time_to_seconds(text: str) -> float | None:
    """'1h 2m', '3m 4.56s', '12.34s' (pw.x clock format) -> seconds."""
    total, found = 0.0, False
    for value, unit in re.findall(r"([\d.]+)\s*([hms])", text):
        total += float(value) * {"h": 3600.0, "m": 60.0, "s": 1.0}[unit]
        found = True
    return total if found else None


def parse_status(out: Path) -> dict[str, list[list[str]]]:
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


def parse_output(doc: dict[str, Any], settings: PWSettings, out: Path, err: Path) -> str | None:
    """Fill ``doc`` from ``pw.out`` (stdout) and ``pw.err``; return the failure reason.

    ``None`` means success: finished, parsed, SCF (and relaxation) converged.
    """
    status = parse_status(out)

    def last(key: str) -> str | None:
        return status[key][-1][0] if status.get(key) else None

    doc["pw_version"] = last("version")
    done = [int(x[0]) for x in status.get("scf_done", [])]
    failed = [int(x[0]) for x in status.get("scf_failed", [])]
    if done or failed:
        doc["scf_iterations"] = (failed or done)[-1] if failed else done[-1]
        doc["total_scf_iterations"] = sum(done) + sum(failed)
    if status.get("wall"):
        doc["pw_wall_time_s"] = qe_time_to_seconds(status["wall"][-1][1])
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
        doc["structure"] = atoms_to_structure(final)
        if res.get("forces") is not None:
            forces = np.asarray(res["forces"], dtype=float)
            doc["forces"] = forces.tolist()
            doc["max_force"] = float(np.linalg.norm(forces, axis=1).max())
        if res.get("stress") is not None:
            from ase.stress import voigt_6_to_full_3x3_stress

            # ASE stress is eV/A^3 with tension positive; flip to QE's pressure sign.
            full = -voigt_6_to_full_3x3_stress(np.asarray(res["stress"])) / units.GPa
            doc["stress"] = full.tolist()
            doc["pressure"] = float(np.trace(full) / 3.0)

    # classify: the most specific reason first
    rc = doc.get("return_code")
    if status.get("error_routine"):
        routine = last("error_routine")
        msg = status["error_message"][0][0] if status.get("error_message") else ""
        return f"pw.x error in routine {routine}: {msg}".strip()
    if failed:
        return (
            f"SCF not converged after {failed[-1]} iterations "
            f"(electron_maxstep={settings.electron_maxstep})"
        )
    if rc not in (0, None):
        detail = _tail(err, 5) or _tail(out, 5) or "no output"
        return f"pw.x exited with code {rc}: {detail}"
    if not status.get("job_done"):
        return f"pw.x output incomplete (no 'JOB DONE'): {_tail(out, 5)}"
    if not images:
        return "no total energy found in pw.x output"
    if relax_ok is False:
        why = "maximum ionic steps reached" if status.get("max_steps") else "BFGS failed"
        return f"{settings.calculation} not converged: {why} (nstep={settings.nstep})"
    if not scf_ok:
        return "SCF convergence not reported by pw.x"
    return None
