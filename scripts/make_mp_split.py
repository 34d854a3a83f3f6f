"""The recorded train/validation split for training on the Materials Project corpus.

    python scripts/make_mp_split.py DATASETS [--out docs/data/split-mp2025-seed0.json]

Held out (seed 0, by material id):
- ``mp20like``: 2,000 structures of ``mp_2025/le20.csv.gz`` with e_above_hull_mp2018 < 0.08
  eV/atom (MP-20's stability cut; ≤ 20 atoms), the validation set for MP-20-like chemistry;
- ``mp_other``: 1,000 further ``le20`` structures (unstable, or no 2018 hull energy);
- every id held out by the earlier split (``docs/data/split-seed0.json``: perov-5, carbon-24,
  MP-20 slice, 3DSC), so those validation numbers stay comparable;
- the MP-20 slice's own ``val.csv``, which is never trained on;
- named, not held out anew: ``mp20like_novel``, the ``mp20like`` crystals without a training
  twin (see :func:`training_twins`), the set on which "never seen" holds.
Everything else in the sources trains (the MP-20 slice's train.csv is left out of them: 1,041 of
its 1,090 structures are in le20 already). Only the held-out ids are written.
"""

from __future__ import annotations

import argparse
import functools
from pathlib import Path

import numpy as np
import pandas as pd
from pymatgen.analysis.structure_matcher import StructureMatcher
from pymatgen.core import Composition, Structure

from dao_core.data import load_split, save_split
from dao_core.metrics import MATCHER_KWARGS

N_MP20LIKE, N_OTHER, SEED = 2000, 1000, 0
# The MP files a model may train on; twins are looked for in all of them.
MP_FILES = ("le20.csv.gz", "21to100.csv.gz")


def training_twins(ids: list[str], held_out: set[str], mp_folder: Path) -> set[str]:
    """Those of ``ids`` with a twin among the training structures: another material id that
    the benchmark's StructureMatcher (DiffCSP's tolerances) matches. The Materials Project
    holds some crystals more than once (and loose tolerances join close variants), so a model
    could match these by recalling a training structure; measured 2026-12-08: 185 of the 2,000
    ``mp20like`` crystals (docs/benchmarks.md)."""
    columns = ["material_id", "cif", "formula"]
    frame = pd.concat(  # keep_default_na: the formula "NaN" is sodium nitride
        [pd.read_csv(mp_folder / f, usecols=columns, keep_default_na=False) for f in MP_FILES]
    )
    frame["reduced"] = [  # three rows have no formula: read it from their structure
        Composition(f or Structure.from_str(c, fmt="cif").composition).reduced_formula
        for f, c in zip(frame["formula"], frame["cif"], strict=True)
    ]
    wanted = frame[frame["material_id"].isin(set(ids))]
    train = frame[~frame["material_id"].isin(held_out) & frame["reduced"].isin(wanted["reduced"])]
    by_formula = train.groupby("reduced")["cif"].apply(list).to_dict()
    matcher = StructureMatcher(**MATCHER_KWARGS)
    parse = functools.cache(lambda cif: Structure.from_str(cif, fmt="cif"))  # formulas repeat
    twins = set()
    for mid, reduced, cif in wanted[["material_id", "reduced", "cif"]].itertuples(index=False):
        structure = parse(cif)
        others = (parse(c) for c in by_formula.get(reduced, []))
        if any(matcher.fit(structure, other) for other in others):
            twins.add(mid)
    return twins


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("datasets", type=Path)
    parser.add_argument("--previous", type=Path, default=Path("docs/data/split-seed0.json"))
    parser.add_argument("--out", type=Path, default=Path("docs/data/split-mp2025-seed0.json"))
    args = parser.parse_args()

    previous = set(load_split(args.previous)["val"])
    slice_val = set(pd.read_csv(args.datasets / "mp_20_slice" / "val.csv")["material_id"])
    frame = pd.read_csv(
        args.datasets / "mp_2025" / "le20.csv.gz",
        usecols=["material_id", "e_above_hull_mp2018"],
    )
    frame = frame[~frame["material_id"].isin(previous | slice_val)]
    rng = np.random.default_rng(SEED)
    order = frame.iloc[rng.permutation(len(frame))]
    stable = order["e_above_hull_mp2018"] < 0.08
    mp20like = order.loc[stable, "material_id"].iloc[:N_MP20LIKE].tolist()
    other = order.loc[~stable, "material_id"].iloc[:N_OTHER].tolist()
    val = sorted(set(mp20like) | set(other) | previous | slice_val, key=str)
    sources = [
        "mp_2025/le20.csv.gz",
        "perov_5/val.csv",
        "carbon_24/val.csv",
    ]
    twins = training_twins(mp20like, set(val), args.datasets / "mp_2025")
    sets = {
        "mp20like": sorted(mp20like),
        "mp20like_novel": sorted(set(mp20like) - twins),
        "mp_other": sorted(other),
        "mp20_slice_val": sorted(slice_val),
    }
    save_split(args.out, None, val, SEED, sources, val_sets=sets)
    print(
        f"{len(val)} held-out ids -> {args.out}: "
        + ", ".join(f"{k} {len(v)}" for k, v in sets.items())
    )


if __name__ == "__main__":
    main()
