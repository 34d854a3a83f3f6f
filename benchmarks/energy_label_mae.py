"""DAO-P energy error on held-out structures against its uniform label and against DFT.

    python benchmarks/energy_label_mae.py --model runs/p1/final \
        --data labels/mp_2025-le20.csv.gz --split docs/data/split-mp2025-seed0.json:mp20like

``--data`` is a file written by ``scripts/label_chgnet.py``: its
``chgnet_formation_energy_per_atom`` is the label DAO-P trains on, and
``formation_energy_per_atom``, where present, is Materials Project's DFT value. For the split's
validation ids (a named subset after ``:``) it prints the MAE of DAO-P against the label, of
DAO-P and of the label itself (CHGNet) against DFT, and of a constant (the training mean stored
in the checkpoint), each +- its standard error.
"""

from __future__ import annotations

import argparse
import json

import numpy as np
import pandas as pd
import torch
from rich.console import Console
from rich.table import Table

from dao_core.checkpoint import load_model
from dao_core.data import CrystalBatch, held_out_ids, load_csv

LABEL = "chgnet_formation_energy_per_atom"


def mae(pred: np.ndarray, ref: np.ndarray) -> tuple[float, float, int]:
    err = np.abs(pred - ref)[np.isfinite(pred - ref)]
    return float(err.mean()), float(err.std() / np.sqrt(len(err))), len(err)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True)
    parser.add_argument("--data", required=True)
    parser.add_argument("--split", required=True, help="SPLIT.json[:SUBSET]")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--json")
    args = parser.parse_args()
    model = load_model(args.model)
    keep = held_out_ids(args.split)
    records = [r for r in load_csv(args.data, LABEL) if r.material_id in keep]
    frame = pd.read_csv(
        args.data, usecols=lambda c: c in ("material_id", "formation_energy_per_atom")
    )
    dft = frame.astype({"material_id": str}).set_index("material_id")
    dft = dft.get("formation_energy_per_atom", pd.Series(dtype=float))
    label = np.array([r.energy for r in records])
    mp = dft.reindex([r.material_id for r in records]).to_numpy(dtype=float)
    pred = []
    with torch.no_grad():
        for start in range(0, len(records), args.batch_size):
            batch = CrystalBatch.from_records(records[start : start + args.batch_size])
            pred.append(model.energy(batch.to(model.device), physical=True).float().cpu().numpy())
    dao_p = np.concatenate(pred)
    rows = {
        "DAO-P vs label": mae(dao_p, label),
        "mean baseline vs label": mae(np.full_like(label, model.label.mean), label),
        "DAO-P vs MP DFT": mae(dao_p, mp),
        "label (CHGNet) vs MP DFT": mae(label, mp),
    }
    table = Table("comparison", "MAE (eV/atom)", "n", title=f"{args.model} on {args.split}")
    for name, (value, se, n) in rows.items():
        table.add_row(name, f"{value:.4f} ± {se:.4f}", str(n))
    Console(width=100).print(table)
    if args.json:
        with open(args.json, "w") as handle:
            json.dump({k: dict(mae=v[0], se=v[1], n=v[2]) for k, v in rows.items()}, handle)


if __name__ == "__main__":
    main()
