"""Would a second potential rank the end-to-end benchmark's top polymorphs better than CHGNet?

Reads `dao benchmark-csp --save-structures --json FILE` rows (the CHGNet-ranked top polymorphs
and the CHGNet-relaxed reference, as CIFs), relaxes each of them again with another potential
(ASE FIRE on a FrechetCellFilter, atomate2's route), re-ranks the top by that potential's
energy, and reports per composition whether rank 1 matches the reference (both relaxed by the
second potential; StructureMatcher at DiffCSP's tolerances) before and after.

    python benchmarks/rerank_study.py rows.json --potential SevenNet:7net-l3i5 --json out.json

The potential is an atomate2 MLFF name with an optional model (``SevenNet:7net-l3i5``; SevenNet's
weights ship in its wheel; ``CHGNet`` is a control: the same potential again); relaxation and
energies are dao_flows.refine's, as ``dao csp --refine-top`` runs them.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

from atomate2.forcefields.utils import ase_calculator
from pymatgen.analysis.structure_matcher import StructureMatcher
from pymatgen.core import Structure

from dao_flows.benchmark_csp import TOLERANCES
from dao_flows.refine import relax_structure


def calculator(spec: str) -> Any:
    """``SevenNet:7net-l3i5`` -> atomate2's SevenNet calculator with that model (CPU)."""
    name, _, model = spec.partition(":")
    return ase_calculator(name, **({"model": model} if model else {}), device="cpu")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("rows", type=Path, nargs="+", help="benchmark-csp JSON files")
    parser.add_argument("--potential", default="SevenNet:7net-l3i5")
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
            reference, e_ref = relax_structure(
                Structure.from_str(row["reference_cif"], "cif"), calc, args.fmax, args.steps
            )
            ranked = []
            for polymorph in row["top"]:
                structure, energy = relax_structure(
                    Structure.from_str(polymorph["cif"], "cif"), calc, args.fmax, args.steps
                )
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
