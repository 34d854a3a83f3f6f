"""Build a template library (dao_flows.templates) from a Materials Project CSV.

    # the bundled library
    python scripts/build_template_library.py $DAO_DATASETS/mp_2025/le20.csv.gz \
        dao_flows/data/templates-mp2025.npz --exclude-split docs/data/split-mp2025-seed0.json
    # a larger one for big cells (e.g. the eta-carbide Zr4Rh2O, 28 atoms), passed with --templates
    python scripts/build_template_library.py $DAO_DATASETS/mp_2025/21to100.csv.gz \
        templates-21to40.npz --max-sites 40 --keep-unknown

Keeps structures within ``--max-e-above-hull`` (0.1 eV/atom) of the hull by the MP-2018
energies (``e_above_hull_mp2018``; ``--keep-unknown`` also keeps rows without one), one per
(formula, space group) where the file has space groups, else one per formula, and leaves out
every structure that is also in the MP-20 slice (``in_mp20_slice_trainval``), so that
validation set stays unseen by the template source. ``--exclude-split`` (the bundled library:
``docs/data/split-mp2025-seed0.json``) also leaves out every structure whose reduced formula is
that of a held-out structure of the source, so the validation compositions are answered by
substitution from other compositions, never by a copy of themselves (Materials Project holds
duplicate entries of one structure). The case-study compositions were already removed from
mp_2025.
"""

from __future__ import annotations

import argparse
import warnings
from pathlib import Path

import pandas as pd
from pymatgen.core import Composition, Structure

from dao_core.data import held_out_ids
from dao_flows.templates import TemplateLibrary


def reduced_formulas(cifs: pd.Series) -> list[str]:
    """The CIFs' own formulas (the ``formula`` column reads "NaN" as missing)."""
    lines = (next(x for x in c.splitlines() if x.startswith("_chemical_formula_sum")) for c in cifs)
    return [line.split(None, 1)[1].strip().strip("'\"") for line in lines]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("source", type=Path)
    parser.add_argument("out", type=Path)
    parser.add_argument("--max-e-above-hull", type=float, default=0.1)
    parser.add_argument("--keep-unknown", action="store_true")
    parser.add_argument("--max-sites", type=int, default=None)
    parser.add_argument("--exclude-split", type=Path, help="leave out held-out formulas")
    args = parser.parse_args()
    frame = pd.read_csv(args.source, keep_default_na=False, na_values=[""])
    frame["reduced"] = [Composition(f).reduced_formula for f in reduced_formulas(frame["cif"])]
    e_hull = frame["e_above_hull_mp2018"]
    keep = (e_hull <= args.max_e_above_hull) | (e_hull.isna() if args.keep_unknown else False)
    keep &= frame["in_mp20_slice_trainval"] == 0
    if args.exclude_split:
        held_out = frame["material_id"].isin(held_out_ids(args.exclude_split))
        keep &= ~frame["reduced"].isin(set(frame.loc[held_out, "reduced"]))
        print(f"left out {int(held_out.sum())} held-out structures and their formulas")
    if args.max_sites:
        keep &= frame["nsites"] <= args.max_sites
    frame = frame[keep].sort_values("e_above_hull_mp2018")  # known-stable first, NaN last
    unique = ["reduced", "spacegroup.number"] if "spacegroup.number" in frame else ["reduced"]
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
