"""Is a data set's site assignment the energy minimum? For each held-out crystal, CHGNet's
energy of the reference against every other assignment of its species to the same sites (same
lattice and coordinates, unrelaxed): how often the reference is the lowest (issue 11, perov-5).

    python benchmarks/site_permutation_energies.py --data perov5.npz \
        --split docs/data/split-mp2025-seed0.json
"""

from __future__ import annotations

import argparse
import itertools
import warnings

import numpy as np
from pymatgen.core import Structure
from rich.console import Console

from dao_core.data import held_out_ids, load_csv

TIE = 1e-4  # eV/atom: symmetry-equivalent assignments come out equal to about 1e-6


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", required=True)
    ap.add_argument("--split", required=True)
    ap.add_argument("--limit", type=int, default=None, help="first N crystals")
    args = ap.parse_args()
    warnings.filterwarnings("ignore")
    from chgnet.model import CHGNet

    model = CHGNet.load(verbose=False, use_device="cpu")
    keep = held_out_ids(args.split)
    records = [r for r in load_csv(args.data) if r.material_id in keep][: args.limit]
    lowest = 0
    for r in records:
        s = r.to_structure()
        species = tuple(str(x) for x in s.species)
        assignments = sorted(set(itertools.permutations(species)))
        variants = [Structure(s.lattice, list(a), s.frac_coords) for a in assignments]
        pred = model.predict_structure(variants, task="e", batch_size=64)
        energy = np.array([p["e"] for p in pred]).ravel()
        ref = assignments.index(species)
        lowest += bool((energy[ref] <= np.delete(energy, ref) + TIE).all())
    Console().print(
        f"{len(records)} crystals: the reference assignment is CHGNet's lowest (ties within "
        f"{TIE} eV/atom) for {lowest} ({lowest / len(records):.1%})"
    )


if __name__ == "__main__":
    main()
