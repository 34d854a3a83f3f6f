"""Running ``pw.x``: Structure + :class:`PWSettings` + work dir -> :class:`QEVerificationDoc`.

A pure function, usable without jobflow. It never raises for calculation problems:
missing pseudopotentials, a crashing or missing ``pw.x``, SCF or relaxation
non-convergence all come back as ``success=False`` with a ``failure_reason``, so that one
candidate cannot stop the verification of the others.
"""

from __future__ import annotations

import logging
import os
import shlex
import shutil
import subprocess
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from pymatgen.core import Structure

from dao_flows.qe.inputs import (
    DEFAULT_PW_COMMAND,
    ENV_PW_COMMAND,
    OUTDIR,
    PWSettings,
    kpoint_grid,
    write_input,
)
from dao_flows.qe.parse import parse_output
from dao_flows.qe.pseudos import (
    PseudoError,
    default_cutoffs,
    find_pseudopotentials,
    resolve_pseudo_dir,
)
from dao_flows.qe.schemas import QEVerificationDoc

logger = logging.getLogger(__name__)

INPUT_FILE = "pw.in"
OUTPUT_FILE = "pw.out"
ERROR_FILE = "pw.err"


def resolve_pw_command(settings: PWSettings) -> list[str]:
    """Field > ``$DAO_PW_COMMAND`` > ``pw.x``; MPI prefix when ``mpi_ranks > 1``."""
    base = settings.pw_command or os.environ.get(ENV_PW_COMMAND) or DEFAULT_PW_COMMAND
    cmd = shlex.split(base)
    if settings.mpi_ranks > 1:
        cmd = shlex.split(settings.mpi_command.format(nranks=settings.mpi_ranks)) + cmd
    return cmd


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
    doc["input_parameters"] = write_input(
        wd / INPUT_FILE, structure, settings, pseudos, pseudo_dir, ecutwfc, ecutrho, grid
    )

    # 3. run pw.x (its own stdout file in the work dir)
    out, err = wd / OUTPUT_FILE, wd / ERROR_FILE
    doc["stdout_file"] = str(out)
    reason = _execute(settings, wd, out, err, doc)
    if reason is not None:
        return finish(reason)

    # 4. parse and classify
    reason = parse_output(doc, settings, out, err)
    doc["success"] = reason is None
    return finish(reason)


def _execute(
    settings: PWSettings, wd: Path, out: Path, err: Path, doc: dict[str, Any]
) -> str | None:
    """Run ``pw.x -in pw.in`` in ``wd``; record command, return code and wall time in
    ``doc``. Returns a failure reason when the process could not run to its end."""
    cmd = resolve_pw_command(settings) + ["-in", INPUT_FILE]
    doc["command"] = cmd
    env = dict(os.environ, OMP_NUM_THREADS=str(settings.omp_num_threads))
    if settings.mpi_ranks > 1 and hasattr(os, "geteuid") and os.geteuid() == 0:
        # Open MPI refuses root by default; CI containers run as root.
        env.setdefault("OMPI_ALLOW_RUN_AS_ROOT", "1")
        env.setdefault("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1")
    t0 = time.perf_counter()
    reason: str | None = None
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
        reason = f"pw.x command not found: {cmd[0]!r} ({exc.strerror})"
    except PermissionError as exc:
        reason = f"pw.x command not executable: {cmd[0]!r} ({exc.strerror})"
    except subprocess.TimeoutExpired:
        reason = f"pw.x timed out after {settings.timeout_s} s"
    finally:
        if not settings.keep_outdir:
            shutil.rmtree(wd / OUTDIR, ignore_errors=True)
    doc["wall_time_s"] = time.perf_counter() - t0
    return reason
