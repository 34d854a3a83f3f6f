"""For each end-to-end miss: does the template library hold the reference's prototype?

Reads `dao benchmark-csp --json` rows and the reference data they came from; for every row
whose rank 1 missed, counts the library's templates of the reference's anonymous formula,
those that are its prototype (StructureMatcher ``fit_anonymous`` at DiffCSP's tolerances), and
where the first substitution from such a template comes in the library's candidate order. A
prototype present and offered first means the ranking lost it; none means only the generator
could have found it.

    python benchmarks/template_coverage.py rows.json --data le20.npz [--templates LIB] [--all]

``--all`` lists the hits too and counts the rows whose prototype is among the ``--slots``
(default 20, the flow's) template candidates the library offers.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
from pymatgen.analysis.structure_matcher import StructureMatcher
from pymatgen.core import Structure
from rich.console import Console
from rich.table import Table

from dao_core.data import load_csv
from dao_flows.benchmark_csp import TOLERANCES
from dao_flows.templates import TemplateLibrary, count_key


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("rows", type=Path, nargs="+", help="benchmark-csp JSON files")
    parser.add_argument("--data", required=True, help="the reference structures (CSV or .npz)")
    parser.add_argument("--templates", help="template library (default: the bundled one)")
    parser.add_argument("--all", action="store_true", help="every row, not only the misses")
    parser.add_argument("--slots", type=int, default=20, help="template candidates per run")
    args = parser.parse_args()
    library = TemplateLibrary.load(args.templates)
    wanted = {r["material_id"]: r for f in args.rows for r in json.loads(f.read_text())["rows"]}
    records = {r.material_id: r for r in load_csv(args.data) if r.material_id in wanted}
    matcher = StructureMatcher(**TOLERANCES["diffcsp"])
    table = Table(
        "composition", "atoms", "rank of match", "templates", "prototype", "first offered"
    )
    within = total = 0
    for mid, row in wanted.items():
        if (row["hit_rank"]["diffcsp"] == 1 and not args.all) or mid not in records:
            continue
        rec = records[mid]
        reference = Structure(rec.lattice, rec.atomic_numbers.tolist(), rec.frac)
        _, counts = np.unique(rec.atomic_numbers, return_counts=True)
        templates = library.templates.get(count_key(counts), [])
        prototypes = {
            t.material_id
            for t in templates
            if len(rec.atomic_numbers) % len(t.numbers) == 0
            and matcher.fit_anonymous(Structure(t.lattice, t.numbers.tolist(), t.frac), reference)
        }
        offered = library.candidates(rec.atomic_numbers, 10**6)
        ranks = [i for i, (_, meta) in enumerate(offered, 1) if meta["template"] in prototypes]
        first = ranks[0] if ranks else None
        total += 1
        within += first is not None and first <= args.slots
        table.add_row(
            row["formula"], str(len(rec.atomic_numbers)), str(row["hit_rank"]["diffcsp"] or "-"),
            str(len(templates)), str(len(prototypes)),
            "-" if first is None else f"{first} of {len(offered)}",
        )  # fmt: skip
    console = Console(width=120)
    console.print(table)
    slots = f"the first {args.slots} template candidates"
    console.print(f"prototype among {slots}: {within} of {total}")


if __name__ == "__main__":
    main()
