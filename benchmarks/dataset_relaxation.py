"""Does DAO-P's dataset relaxation move training structures toward real minima?

Before Stage II trains DAO-G on a corpus relaxed by DAO-P (method doc, section 6), check what
the relaxation does, with CHGNet as the referee. Training structures of the MP corpus in the
authors' window (0.08 < E_hull <= 0.5 eV/atom on the MP-2018 hull) and, as a control, stable
ones (E_hull <= 0.08) are relaxed two ways:

* DAO-P: L-BFGS on X and L at the clean step, exactly as ``dao relax-dataset`` (5 iterations,
  lr 1.0, batches of 100 similar sizes; a step that leaves the volume window is discarded);
* CHGNet: batched FIRE on positions and cell to ``--fmax`` (the local minimum nearest the start).

The table gives CHGNet's energy per atom change after each, the share of structures DAO-P
lowers, and whether DAO-P's structure is closer to CHGNet's minimum than the start was
(pymatgen's normalised RMS distance after StructureMatcher, defaults). Any CDVAE-layout CSV
with an E_hull column (``--label``) can be checked the same way before ``dao relax-dataset``.

    python benchmarks/dataset_relaxation.py --data $DAO_DATASETS/mp_2025/le20.csv.gz \
        --split docs/data/split-mp2025-seed0.json --n 200 --json relax.json
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from pymatgen.analysis.structure_matcher import StructureMatcher
from pymatgen.core import Structure
from rich.console import Console
from rich.table import Table

from dao_core.checkpoint import load_model
from dao_core.dao import DAOModel
from dao_core.data import CrystalRecord
from dao_core.data.splits import load_split
from dao_core.relaxation import relax_records
from dao_flows.batched_fire import batched_fire_relax, load_chgnet

GROUPS = {"window 0.08-0.5": (0.08, 0.5), "stable <= 0.08": (-np.inf, 0.08)}


def draw(
    frame: pd.DataFrame, label: str, bounds: tuple[float, float], n: int, seed: int
) -> pd.DataFrame:
    low, high = bounds
    rows = frame[(frame[label] > low) & (frame[label] <= high)]
    return rows.sample(n=min(n, len(rows)), random_state=seed)


def chgnet_energies(model: Any, structures: list[Structure]) -> np.ndarray:
    """CHGNet energy per atom (eV/atom) of each structure as given."""
    preds = model.predict_structure(structures, task="e", batch_size=32)
    return np.array([float(np.asarray(p["e"]).reshape(-1)[0]) for p in preds])


def distance(matcher: StructureMatcher, a: Structure, b: Structure) -> float:
    """Normalised RMS distance, NaN for no match. Not ``dao_core.metrics.match``: that one uses
    the benchmark's loose tolerances, and these moves are small."""
    rms = matcher.get_rms_dist(a, b)
    return np.nan if rms is None else float(rms[0])


def study(rows: pd.DataFrame, dao_p: DAOModel, chgnet: Any, args: argparse.Namespace) -> dict:
    structures = [Structure.from_str(c, fmt="cif") for c in rows["cif"]]
    records = [
        CrystalRecord.from_structure(s, energy=e, material_id=m, canonical=False)
        for s, e, m in zip(structures, rows[args.label], rows["material_id"], strict=True)
    ]
    start = time.perf_counter()
    relaxed, moved = relax_records(dao_p, records, None, args.iterations, args.lr)
    dao_s = time.perf_counter() - start
    by_dao = [r.to_structure() for r in relaxed]
    start = time.perf_counter()
    results, _ = batched_fire_relax(structures, chgnet, fmax=args.fmax, steps=args.steps)
    chgnet_s = time.perf_counter() - start
    e0 = chgnet_energies(chgnet, structures)
    e_dao = chgnet_energies(chgnet, by_dao)
    e_min = np.array([np.nan if r.energy_per_atom is None else r.energy_per_atom for r in results])
    matcher = StructureMatcher()
    d0, d_dao = [], []
    for s, d, r in zip(structures, by_dao, results, strict=True):
        target = r.structure
        d0.append(np.nan if target is None else distance(matcher, s, target))
        d_dao.append(np.nan if target is None else distance(matcher, d, target))
    d0, d_dao = np.array(d0), np.array(d_dao)
    volume = np.array([d.volume / s.volume for s, d in zip(structures, by_dao, strict=True)])
    both = np.isfinite(d0) & np.isfinite(d_dao)
    return {
        "n": len(rows),
        "moved": int(moved.sum()),
        "dE_dao": float(np.mean(e_dao - e0)),
        "dE_dao_median": float(np.median(e_dao - e0)),
        "lowered": float(np.mean(e_dao < e0 - 1e-4)),
        "raised": float(np.mean(e_dao > e0 + 1e-4)),
        "dE_chgnet": float(np.nanmean(e_min - e0)),
        "share_of_chgnet_drop": float(np.nansum(e_dao - e0) / np.nansum(e_min - e0)),
        "closer_to_chgnet_min": float(np.mean(d_dao[both] < d0[both])),
        "rms_start_to_min": float(np.nanmean(d0)),
        "rms_dao_to_min": float(np.nanmean(d_dao)),
        "volume_ratio_mean": float(volume.mean()),
        "dao_s": dao_s,
        "chgnet_s": chgnet_s,
        "per_structure": {
            "material_id": list(rows["material_id"]),
            "e_above_hull": [float(x) for x in rows[args.label]],
            "chgnet_start": e0.tolist(),
            "chgnet_after_dao": e_dao.tolist(),
            "chgnet_min": e_min.tolist(),
            "rms_start_to_min": d0.tolist(),
            "rms_dao_to_min": d_dao.tolist(),
        },
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", required=True, help="CDVAE-layout CSV with an E_hull column")
    parser.add_argument("--split", help="recorded split; its held-out ids are skipped")
    parser.add_argument("--label", default="e_above_hull_mp2018", help="E_hull column (eV/atom)")
    parser.add_argument("--dao-p", default="dao-p-base")
    parser.add_argument("--n", type=int, default=200, help="structures per group")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--iterations", type=int, default=5, help="DAO-P L-BFGS iterations")
    parser.add_argument("--lr", type=float, default=1.0, help="DAO-P L-BFGS step")
    parser.add_argument("--fmax", type=float, default=0.05)
    parser.add_argument("--steps", type=int, default=500, help="CHGNet FIRE steps at most")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    columns = ["material_id", "cif", args.label]
    frame = pd.read_csv(args.data, usecols=columns).dropna(subset=[args.label])
    if args.split:
        frame = frame[~frame["material_id"].isin(set(load_split(args.split)["val"]))]
    dao_p, chgnet = load_model(args.dao_p, device="cpu"), load_chgnet("cpu")
    report = {
        "command": "python benchmarks/dataset_relaxation.py "
        + " ".join(f"--{k.replace('_', '-')} {v}" for k, v in vars(args).items() if v is not None),
        "machine": f"{platform.node()} {platform.processor() or platform.machine()}",
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "dao_p": dao_p.name,
        "groups": {},
    }
    for name, bounds in GROUPS.items():
        rows = draw(frame, args.label, bounds, args.n, args.seed)
        report["groups"][name] = study(rows, dao_p, chgnet, args)

    table = Table(title=f"DAO-P dataset relaxation judged by CHGNet ({dao_p.name})")
    for column in (
        "group", "n", "moved", "ΔE CHGNet after DAO-P (mean / median, meV/atom)",
        "lowered / raised", "ΔE CHGNet to its minimum", "share of drop",
        "closer to CHGNet min", "RMS start→min / DAO-P→min", "V ratio",
    ):  # fmt: skip
        table.add_column(column)
    for name, g in report["groups"].items():
        table.add_row(
            name, str(g["n"]), str(g["moved"]),
            f"{1e3 * g['dE_dao']:.1f} / {1e3 * g['dE_dao_median']:.1f}",
            f"{g['lowered']:.0%} / {g['raised']:.0%}", f"{1e3 * g['dE_chgnet']:.1f}",
            f"{g['share_of_chgnet_drop']:.0%}", f"{g['closer_to_chgnet_min']:.0%}",
            f"{g['rms_start_to_min']:.3f} / {g['rms_dao_to_min']:.3f}",
            f"{g['volume_ratio_mean']:.3f}",
        )  # fmt: skip
    Console().print(table)
    if args.json:
        args.json.write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
