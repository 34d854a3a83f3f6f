"""Generate structures with DAO-G for SuperCon compositions that have no 3DSC structure: the
paper's augmentation of the Tc training set (docs/superconductors.md).

Compositions are kept when they are ordered (integer amounts as written, so no doping), at most
``--max-atoms`` atoms per formula unit, not a case-study composition, and their reduced formula
is in no 3DSC structure (so an augmented row can never stand in for a scored one). Entries of
one composition are merged with their median Tc. One DAO-G sample per composition is written
as a CDVAE-layout CSV (material_id ``supercon:<formula>``, tc, cif) for
``dao finetune-property --augment OUT.csv:tc``.

    python scripts/supercon_augment.py --n 300 --out runs/supercon_aug.csv
"""

from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from pymatgen.core import Composition

from dao_core.checkpoint import load_model
from dao_core.csp import sample_batch
from dao_core.data import parse_composition
from dao_core.property_training import is_case_composition

DATASETS = Path(__file__).resolve().parents[1].parent / "shared" / "datasets"


def ordered_formula(name: str, max_atoms: int) -> str | None:
    """Reduced formula of an ordered composition of at most ``max_atoms`` atoms, else None."""
    try:
        comp = Composition(name)
    except Exception:  # SuperCon names include free text; those rows are skipped
        return None
    amounts = np.array(list(comp.values()), dtype=float)
    if len(comp) == 0 or not np.allclose(amounts, np.round(amounts), atol=1e-6):
        return None
    if comp.num_atoms > max_atoms or any(el.Z > 100 for el in comp):
        return None
    return comp.reduced_formula


def candidates(supercon: Path, structures: Path, max_atoms: int) -> pd.DataFrame:
    frame = pd.read_csv(supercon)
    frame["formula"] = [ordered_formula(str(n), max_atoms) for n in frame["name"]]
    frame = frame.dropna(subset=["formula", "Tc"])
    known = {Composition(f).reduced_formula for f in pd.read_csv(structures)["formula"]}
    keep = ~frame["formula"].isin(known) & ~frame["formula"].map(is_case_composition)
    logging.info(
        "%d ordered SuperCon rows of <= %d atoms; %d of their compositions have a 3DSC "
        "structure or are case studies",
        len(frame), max_atoms, frame.loc[~keep, "formula"].nunique(),
    )  # fmt: skip
    return frame[keep].groupby("formula", as_index=False)["Tc"].median()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--supercon", type=Path, default=DATASETS / "supercon/stanev_2018.csv")
    parser.add_argument("--structures", type=Path, default=DATASETS / "mp_3dsc/structures.csv")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--n", type=int, default=None, help="sample this many compositions")
    parser.add_argument("--max-atoms", type=int, default=20)
    parser.add_argument("--model", default="dao-g-base")
    parser.add_argument("--steps", type=int, default=None, help="default: the model's")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default=None)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")

    pool = candidates(args.supercon, args.structures, args.max_atoms)
    if args.n is not None and args.n < len(pool):
        pool = pool.sample(n=args.n, random_state=args.seed).reset_index(drop=True)
    logging.info("generating one structure for each of %d compositions", len(pool))
    model = load_model(args.model, device=args.device)
    rng = torch.Generator(device=model.device).manual_seed(args.seed)
    started = time.perf_counter()
    structures = sample_batch(
        model, [parse_composition(f) for f in pool["formula"]], args.steps,
        batch_size=args.batch_size, generator=rng,
    )  # fmt: skip
    logging.info("sampled in %.0f s on %s", time.perf_counter() - started, model.device)
    out = pd.DataFrame({
        "material_id": [f"supercon:{f}" for f in pool["formula"]],
        "formula": pool["formula"],
        "tc": pool["Tc"],
        "generator": f"{model.name}:{model.content_hash[:12]}",
        "cif": [s.to(fmt="cif") for s in structures],
    })  # fmt: skip
    args.out.parent.mkdir(parents=True, exist_ok=True)
    out.to_csv(args.out)
    logging.info("%d structures -> %s", len(out), args.out)


if __name__ == "__main__":
    main()
