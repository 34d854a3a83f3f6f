"""Build the bundled template library from the Materials Project structures.

    python scripts/build_template_library.py $DAO_DATASETS/mp_2025/le20.csv.gz \
        dao_flows/data/templates-mp2025.npz

Keeps structures of <= 20 sites within 0.1 eV/atom of the hull (MP-2018 energies, the
``e_above_hull_mp2018`` column), one per (formula, space group), and leaves out every structure
that is also in the MP-20 slice (``in_mp20_slice_trainval``), so that validation set stays unseen
by the template source. The case-study compositions were already removed from mp_2025.
"""

from __future__ import annotations

import sys
import warnings
from pathlib import Path

import pandas as pd
from pymatgen.core import Structure

from dao_flows.templates import TemplateLibrary

MAX_E_ABOVE_HULL = 0.1  # eV/atom


def main(source: Path, out: Path) -> None:
    frame = pd.read_csv(source)
    keep = (frame["e_above_hull_mp2018"] <= MAX_E_ABOVE_HULL) & (
        frame["in_mp20_slice_trainval"] == 0
    )
    frame = frame[keep].sort_values("e_above_hull_mp2018")
    frame = frame.drop_duplicates(["formula", "spacegroup.number"])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        items = [(mid, Structure.from_str(cif, fmt="cif"))
                 for mid, cif in zip(frame["material_id"], frame["cif"], strict=True)]  # fmt: skip
    library = TemplateLibrary.from_structures(items, source.name)
    out.parent.mkdir(parents=True, exist_ok=True)
    library.save(out)
    print(f"wrote {out}: {len(library)} templates, {len(library.templates)} anonymous formulas")


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]))
