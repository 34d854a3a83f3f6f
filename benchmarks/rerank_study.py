"""Would a second potential rank the end-to-end benchmark's top polymorphs better than CHGNet?

Reads `dao benchmark-csp --save-structures --json FILE` rows (the CHGNet-ranked top polymorphs
and the CHGNet-relaxed reference, as CIFs), relaxes each of them again with another potential
(ASE FIRE on a FrechetCellFilter, atomate2's route), re-ranks the top by that potential's
energy, and reports per composition whether rank 1 matches the reference (both relaxed by the
second potential; StructureMatcher at DiffCSP's tolerances) before and after.

    python benchmarks/rerank_study.py rows.json --potential sevennet:7net-0 --json out.json

Potentials: ``sevennet:<model>`` (weights ship in the sevenn wheel: 7net-0, 7net-l3i5,
7net-mf-0) or ``chgnet`` (a control: the same potential again).
"""

from __future__ import annotations

import argparse
import json
import time
import warnings
from pathlib import Path
from typing import Any

from ase.filters import FrechetCellFilter
from ase.optimize import FIRE
from pymatgen.analysis.structure_matcher import StructureMatcher
from pymatgen.core import Structure
from pymatgen.io.ase import AseAtomsAdaptor

from dao_flows.benchmark_csp import TOLERANCES


def calculator(spec: str) -> Any:
    if spec == "chgnet":
        from chgnet.model.dynamics import CHGNetCalculator

        return CHGNetCalculator(use_device="cpu")
    kind, _, model = spec.partition(":")
    if kind != "sevennet":
        raise SystemExit(f"unknown potential {spec!r}: chgnet or sevennet:<model>")
    from sevenn.calculator import SevenNetCalculator

    return SevenNetCalculator(model or "7net-0", device="cpu")


def relax(structure: Structure, calc: Any, fmax: float, steps: int) -> tuple[Structure, float]:
    atoms = AseAtomsAdaptor.get_atoms(structure)
    atoms.calc = calc
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        FIRE(FrechetCellFilter(atoms), logfile=None).run(fmax=fmax, steps=steps)
    return AseAtomsAdaptor.get_structure(atoms), atoms.get_potential_energy() / len(atoms)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("rows", type=Path, nargs="+", help="benchmark-csp JSON files")
    parser.add_argument("--potential", default="sevennet:7net-0")
    parser.add_argument("--fmax", type=float, default=0.05)
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    calc = calculator(args.potential)
    matcher = StructureMatcher(**TOLERANCES["diffcsp"])
    results = []
    for path in args.rows:
        for row in json.loads(path.read_text())["rows"]:
            if row.get("error") or not row.get("reference_cif"):
                continue
            started = time.perf_counter()
            reference, e_ref = relax(Structure.from_str(row["reference_cif"], "cif"), calc,
                                     args.fmax, args.steps)  # fmt: skip
            ranked = []
            for polymorph in row["top"]:
                structure, energy = relax(Structure.from_str(polymorph["cif"], "cif"), calc,
                                          args.fmax, args.steps)  # fmt: skip
                ranked.append((energy, polymorph["rank"], matcher.fit(structure, reference)))
            ranked.sort()
            result = dict(
                material_id=row["material_id"], formula=row["formula"],
                chgnet_rank_of_hit=row["hit_rank"]["diffcsp"],
                rerank_hit_rank=next((i + 1 for i, r in enumerate(ranked) if r[2]), None),
                new_order=[r[1] for r in ranked],
                e_best_minus_reference_meV=round(1000 * (ranked[0][0] - e_ref), 1),
                seconds=round(time.perf_counter() - started, 1),
            )  # fmt: skip
            results.append(result)
            print(json.dumps(result), flush=True)
    before = sum(r["chgnet_rank_of_hit"] == 1 for r in results)
    after = sum(r["rerank_hit_rank"] == 1 for r in results)
    print(f"{len(results)} compositions: top-1 {before} (CHGNet) -> {after} ({args.potential})")
    if args.json:
        summary = dict(potential=args.potential, before=before, after=after, n=len(results))
        args.json.write_text(json.dumps({"summary": summary, "rows": results}, indent=1))


if __name__ == "__main__":
    main()
