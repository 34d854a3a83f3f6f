"""One energy label for every training structure: CHGNet formation energy per atom.

    python scripts/label_chgnet.py OUT_DIR CSV [CSV ...] [--batch-size 64] [--threads 1]

For each CDVAE-layout CSV, CHGNet (weights in its wheel) predicts the energy per atom of every
structure as given (the data sets hold DFT-relaxed cells; no relaxation). The elemental
reference mu_Z is the lowest CHGNet energy per atom among the pure-element structures of Z in
*all* the given files, so every file shares one reference; the label is

    chgnet_formation_energy_per_atom = E_CHGNet / N - sum_Z x_Z mu_Z        (eV/atom)

Each input gets ``OUT_DIR/<name>.csv.gz``: its rows (all columns) plus
``chgnet_energy_per_atom`` and ``chgnet_formation_energy_per_atom``; rows with an element that
has no elemental structure get no formation energy (NaN; logged). Energies are appended to
``OUT_DIR/<name>.energies.csv`` as they are computed, so a stopped run resumes where it was.
Where the file has ``formation_energy_per_atom`` (Materials Project), the MAE against it is
printed: the label's agreement with DFT.
"""

from __future__ import annotations

import argparse
import logging
import time
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import torch

log = logging.getLogger("label_chgnet")


def _name(path: Path) -> str:
    stem = path.name.removesuffix(".gz").removesuffix(".csv")
    return f"{path.parent.name}-{stem}"


def predict(frame: pd.DataFrame, partial: Path, batch_size: int, chunk: int = 2048) -> pd.Series:
    """CHGNet energy per atom by material_id, resuming from (and appending to) ``partial``."""
    from chgnet.model import CHGNet
    from pymatgen.core import Structure

    def read() -> pd.DataFrame:  # ids as text, as in the frame ("18517" is not 18517)
        return pd.read_csv(partial, dtype={"material_id": str})

    done = read() if partial.is_file() else pd.DataFrame(columns=["material_id"])
    todo = frame[~frame["material_id"].isin(set(done["material_id"]))]
    if len(todo):
        model = CHGNet.load(verbose=False)
        started, count = time.perf_counter(), 0
        for start in range(0, len(todo), chunk):
            part = todo.iloc[start : start + chunk]
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                structures = [Structure.from_str(c, fmt="cif") for c in part["cif"]]
                energies = _energies(model, structures, batch_size)
            rows = pd.DataFrame({"material_id": part["material_id"], "e": energies})
            rows.to_csv(partial, mode="a", header=not partial.is_file(), index=False)
            count += len(part)
            rate = count / (time.perf_counter() - started)
            log.info("%s: %d/%d (%.1f structures/s)", partial.name, count, len(todo), rate)
        done = read()
    return done.drop_duplicates("material_id").set_index("material_id")["e"]


def _energies(model, structures: list, batch_size: int) -> list[float]:
    """CHGNet energies per atom; NaN for a structure CHGNet refuses (e.g. atoms with no
    neighbour within its 6 Å graph cutoff), found by retrying one by one."""
    try:
        out = model.predict_structure(structures, task="e", batch_size=batch_size)
        return [float(o["e"]) for o in out]
    except ValueError:
        pass
    energies = []
    for structure in structures:
        try:
            energies.append(float(model.predict_structure(structure, task="e")["e"]))
        except ValueError as exc:
            log.warning("no CHGNet energy for %s: %s", structure.formula, exc)
            energies.append(float("nan"))
    return energies


def fractions(cif_frame: pd.DataFrame) -> list[dict[int, float]]:
    from pymatgen.core import Composition

    # The reduced formula column is not reliable ("NaN" reads as missing): parse the CIF's.
    out = []
    for cif in cif_frame["cif"]:
        line = next(x for x in cif.splitlines() if x.startswith("_chemical_formula_sum"))
        comp = Composition(line.split(None, 1)[1].strip().strip("'\""))
        out.append({el.Z: comp.get_atomic_fraction(el) for el in comp})
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("csv", type=Path, nargs="+")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    torch.set_num_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)

    frames, energies, comps = {}, {}, {}
    for path in args.csv:
        frame = pd.read_csv(path, index_col=0, keep_default_na=False, na_values=[""])
        frame["material_id"] = frame["material_id"].astype(str)
        frames[path] = frame
        energies[path] = predict(frame, args.out / f"{_name(path)}.energies.csv", args.batch_size)
        comps[path] = fractions(frame)

    mu: dict[int, float] = {}  # lowest energy per atom of each element's pure structures
    for path, frame in frames.items():
        e = energies[path].reindex(frame["material_id"]).to_numpy()
        for comp, value in zip(comps[path], e, strict=True):
            if len(comp) == 1 and np.isfinite(value):
                z = next(iter(comp))
                mu[z] = min(mu.get(z, np.inf), float(value))
    log.info("elemental references for %d elements", len(mu))

    for path, frame in frames.items():
        e = energies[path].reindex(frame["material_id"]).to_numpy()
        ref = np.array(
            [sum(x * mu.get(z, np.nan) for z, x in comp.items()) for comp in comps[path]]
        )
        frame["chgnet_energy_per_atom"] = e
        frame["chgnet_formation_energy_per_atom"] = e - ref
        missing = int(np.isnan(ref).sum())
        if missing:
            log.warning("%s: %d rows have an element without a reference", path, missing)
        if "formation_energy_per_atom" in frame:
            diff = frame["chgnet_formation_energy_per_atom"] - frame["formation_energy_per_atom"]
            diff = diff[np.isfinite(diff)]
            log.info("%s: MAE vs MP formation energy %.4f eV/atom over %d rows (median %.4f)",
                     path, diff.abs().mean(), len(diff), diff.abs().median())  # fmt: skip
        target = args.out / f"{_name(path)}.csv.gz"
        frame.to_csv(target)
        log.info("wrote %s", target)


if __name__ == "__main__":
    main()
