"""QE vs DAO benchmark: time and quality of a DAO prediction against a pw.x vc-relax.

QE side (implemented here): ``run_qe_side(structure, settings)`` runs a pw.x ``vc-relax``
from a start structure and returns the document plus wall seconds.

DAO side: ``dao_flows.local.run_dao_side(formula) -> (Structure, seconds)``, the whole DAO
route (8 candidates, batched CHGNet relaxation, ranking) on an in-memory store. The table gives
QE seconds / DAO seconds and the normalised RMSE between the two final structures.

    .venv/bin/python benchmarks/qe_vs_dao.py                 # Si, NaCl; quick settings
    .venv/bin/python benchmarks/qe_vs_dao.py --production    # per-element default cutoffs
    .venv/bin/python benchmarks/qe_vs_dao.py --cif start.cif  # your own start structure
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from pymatgen.core import Composition, Lattice, Structure

from dao_flows.qe import PWSettings, QEVerificationDoc, run_pw

try:  # DAO side: written by the CSP flow author; optional until then.
    from dao_flows.local import run_dao_side as _run_dao_side
except ImportError:  # module or function not there yet
    _run_dao_side = None

run_dao_side: Callable[..., tuple[Structure, float]] | None = _run_dao_side

#: Cutoffs from the pseudopotential hints (a vc-relax needs them: at the low test cutoffs
#: Pulay stress collapses NaCl), coarse k-mesh (2 k-points per 1/A): about a minute each.
QUICK_SETTINGS = PWSettings(calculation="vc-relax", kpoint_density=2.0)
#: Cutoffs from the pseudopotential hints, default k-point density (4 per 1/A).
PRODUCTION_SETTINGS = PWSettings(calculation="vc-relax")


def _fcc2(a: float, species: list[str], second: list[float]) -> Structure:
    h = a / 2
    return Structure([[0, h, h], [h, 0, h], [h, h, 0]], species, [[0, 0, 0], second])


#: Built-in start structures (3 % expanded) used when there is no DAO prediction.
PROTOTYPES: dict[str, Callable[[], Structure]] = {
    "Si": lambda: _fcc2(5.43 * 1.03, ["Si", "Si"], [0.25, 0.25, 0.25]),
    "NaCl": lambda: _fcc2(5.60 * 1.03, ["Na", "Cl"], [0.5, 0.5, 0.5]),
    "SrTiO3": lambda: Structure(
        Lattice.cubic(3.90 * 1.03),
        ["Sr", "Ti", "O", "O", "O"],
        [[0, 0, 0], [0.5, 0.5, 0.5], [0.5, 0.5, 0], [0.5, 0, 0.5], [0, 0.5, 0.5]],
    ),
}


# ======================================================================================
# QE SIDE - entry point for the DAO flow author: call this with each DAO structure.
# ======================================================================================
def run_qe_side(
    structure: Structure,
    settings: PWSettings | None = None,
    workdir: str | Path | None = None,
) -> tuple[QEVerificationDoc, float]:
    """pw.x vc-relax of ``structure``; returns (document, wall seconds incl. I/O).

    ``settings.calculation`` is forced to ``"vc-relax"``. A failed run comes back as a
    document with ``success=False`` (see its ``failure_reason``), never as an exception.
    """
    settings = (settings or PRODUCTION_SETTINGS).model_copy(update={"calculation": "vc-relax"})
    wd = Path(workdir) if workdir else Path(tempfile.mkdtemp(prefix="qe_vs_dao_"))
    t0 = time.perf_counter()
    doc = run_pw(structure, settings, wd)
    return doc, time.perf_counter() - t0


def benchmark_formula(
    formula: str,
    settings: PWSettings,
    root: Path,
    start: Structure | None = None,
) -> dict[str, object]:
    """One table row: the DAO route for ``formula`` and a pw.x vc-relax from ``start`` (a
    strained prototype by default), the time ratio, and the RMSE between the two results under
    DiffCSP's StructureMatcher tolerances (dao_core.metrics.MATCHER_KWARGS)."""
    from pymatgen.analysis.structure_matcher import StructureMatcher

    from dao_core.metrics import MATCHER_KWARGS

    source = "given"
    if start is None:
        if formula not in PROTOTYPES:
            raise SystemExit(f"no built-in start structure for {formula}; pass --cif")
        start, source = PROTOTYPES[formula](), "prototype"
    # Same cell size on both sides: DAO generates as many formula units as the QE start has.
    units = len(start) // int(Composition(formula).num_atoms)
    dao_structure, dao_s = (
        run_dao_side(formula, formula_units=units) if run_dao_side else (None, None)
    )
    doc, qe_s = run_qe_side(start, settings, root / f"{formula}_{source}")
    v0 = start.volume / len(start)
    v1 = doc.structure.volume / len(doc.structure) if doc.structure else None
    rmse = None
    if dao_structure is not None and doc.structure is not None:
        rms = StructureMatcher(**MATCHER_KWARGS).get_rms_dist(dao_structure, doc.structure)
        rmse = rms[0] if rms else None
    return {
        "formula": start.composition.reduced_formula,
        "start": source,
        "nsites": len(start),
        "dao_s": dao_s,
        "qe_s": qe_s,
        "ratio": qe_s / dao_s if dao_s else None,
        "rmse": rmse,
        "ionic": doc.ionic_steps,
        "e1": doc.energy_per_atom,
        "v0": v0,
        "v1": v1,
        "v_dao": dao_structure.volume / len(dao_structure) if dao_structure else None,
        "ok": doc.success,
        "why": doc.failure_reason or "",
    }


def _fmt(x: object, spec: str) -> str:
    return "n/a" if x is None else format(x, spec)


def print_table(rows: list[dict[str, object]]) -> None:
    head = (
        f"{'formula':<8} {'start':<9} {'N':>2} {'DAO s':>7} {'QE s':>7} {'QE/DAO':>7} "
        f"{'RMSE':>7} {'steps':>5} {'E eV/at':>12} {'V0 A3/at':>9} {'V QE':>8} {'V DAO':>8} ok"
    )
    print(head)
    print("-" * len(head))
    for r in rows:
        print(
            f"{r['formula']:<8} {r['start']:<9} {r['nsites']:>2} {_fmt(r['dao_s'], '7.1f')} "
            f"{_fmt(r['qe_s'], '7.1f')} {_fmt(r['ratio'], '7.2f')} {_fmt(r['rmse'], '7.4f')} "
            f"{_fmt(r['ionic'], '5d')} {_fmt(r['e1'], '12.4f')} {_fmt(r['v0'], '9.3f')} "
            f"{_fmt(r['v1'], '8.3f')} {_fmt(r['v_dao'], '8.3f')} "
            f"{'yes' if r['ok'] else 'NO ' + str(r['why'])}"
        )


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("formulas", nargs="*", default=["Si", "NaCl"])
    ap.add_argument("--cif", help="start structure (skips the DAO side)")
    ap.add_argument("--production", action="store_true", help="default cutoffs / k-density")
    ap.add_argument("--pw-command", help="e.g. 'mpirun -np 64 /opt/qe/bin/pw.x'")
    ap.add_argument("--workdir", help="keep runs here (default: a temp dir)")
    args = ap.parse_args(argv)

    settings = PRODUCTION_SETTINGS if args.production else QUICK_SETTINGS
    if args.pw_command:
        settings = settings.model_copy(update={"pw_command": args.pw_command})
    root = Path(args.workdir or tempfile.mkdtemp(prefix="qe_vs_dao_"))
    print(f"DAO side: {'dao_flows.local.run_dao_side' if run_dao_side else 'not available'}")
    print(f"QE settings: {'production' if args.production else 'quick'}; runs in {root}\n")
    if args.cif:
        start = Structure.from_file(args.cif)
        rows = [benchmark_formula(start.composition.reduced_formula, settings, root, start)]
    else:
        rows = [benchmark_formula(f, settings, root) for f in args.formulas]
    print_table(rows)
    return 0 if all(r["ok"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
