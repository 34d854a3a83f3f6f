"""Build a template library (dao_flows.templates) from a Materials Project CSV.

    # the bundled library
    python scripts/build_template_library.py $DAO_DATASETS/mp_2025/le20.csv.gz \
        dao_flows/data/templates-mp2025.npz
    # a larger one for big cells (e.g. the eta-carbide Zr4Rh2O, 28 atoms), passed with --templates
    python scripts/build_template_library.py $DAO_DATASETS/mp_2025/21to100.csv.gz \
        templates-21to40.npz --max-sites 40 --keep-unknown

Keeps structures within ``--max-e-above-hull`` (0.1 eV/atom) of the hull by the MP-2018
energies (``e_above_hull_mp2018``; ``--keep-unknown`` also keeps rows without one), one per
(formula, space group) where the file has space groups, else one per formula, and leaves out
every structure that is also in the MP-20 slice (``in_mp20_slice_trainval``), so that
validation set stays unseen by the template source. The case-study compositions were already
removed from mp_2025.
"""

from __future__ import annotations

import argparse
import warnings
from pathlib import Path

import pandas as pd
from pymatgen.core import Structure

from dao_flows.templates import TemplateLibrary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("source", type=Path)
    parser.add_argument("out", type=Path)
    parser.add_argument("--max-e-above-hull", type=float, default=0.1)
    parser.add_argument("--keep-unknown", action="store_true")
    parser.add_argument("--max-sites", type=int, default=None)
    args = parser.parse_args()
    frame = pd.read_csv(args.source)
    e_hull = frame["e_above_hull_mp2018"]
    keep = (e_hull <= args.max_e_above_hull) | (e_hull.isna() if args.keep_unknown else False)
    keep &= frame["in_mp20_slice_trainval"] == 0
    if args.max_sites:
        keep &= frame["nsites"] <= args.max_sites
    frame = frame[keep].sort_values("e_above_hull_mp2018")  # known-stable first, NaN last
    unique = ["formula", "spacegroup.number"] if "spacegroup.number" in frame else ["formula"]
    frame = frame.drop_duplicates(unique)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        items = [(mid, Structure.from_str(cif, fmt="cif"))
                 for mid, cif in zip(frame["material_id"], frame["cif"], strict=True)]  # fmt: skip
    library = TemplateLibrary.from_structures(items, args.source.name)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    library.save(args.out)
    n_formulas = len(library.templates)
    print(f"wrote {args.out}: {len(library)} templates, {n_formulas} anonymous formulas")


if __name__ == "__main__":
    main()
