"""Upper bound of the 1-sample CSP match rate that a data set allows.

The DiffCSP protocol gives a model only the composition and atom count of each test crystal. When
several test crystals share a composition (all carbon-24 crystals are C_n), one prediction per
composition can match only the test crystals it is equivalent to, so the 1-sample match rate of
*any* model is at most

    sum over compositions c of  max_s |{test crystals of c matched by s}|  /  |test set|,

where s runs over all structures. We estimate the max over a candidate pool (the training and test
structures of that composition) with the benchmark's own StructureMatcher settings. We also report
how often a sample drawn from the training data of the same composition matches (what a model that
reproduces its training distribution would score).

    python benchmarks/match_ceiling.py --data $DAO_DATASETS/carbon_24/val.csv \
        --split docs/data/split-seed0.json
"""

from __future__ import annotations

import argparse
from collections import defaultdict
from concurrent.futures import ProcessPoolExecutor

import numpy as np

from dao_core.data import load_csv, load_split
from dao_core.metrics import match


def _match_row(args: tuple) -> list[bool]:
    candidate, targets = args
    return [match(candidate, t) is not None for t in targets]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", required=True, help="CSV (CDVAE layout)")
    parser.add_argument("--split", required=True, help="split JSON with 'train' and 'val' ids")
    parser.add_argument("--workers", type=int, default=None)
    args = parser.parse_args()

    split = load_split(args.split)
    val_ids = set(split["val"])
    train_ids = set(split["train"]) if "train" in split else None  # None: all but val
    records = load_csv(args.data, canonical=False)
    groups: dict[tuple, dict[str, list]] = defaultdict(lambda: {"train": [], "val": []})
    for r in records:
        key = tuple(sorted(r.atomic_numbers.tolist()))
        if r.material_id in val_ids:
            groups[key]["val"].append(r.to_structure())
        elif train_ids is None or r.material_id in train_ids:
            groups[key]["train"].append(r.to_structure())
    n_val = sum(len(g["val"]) for g in groups.values())

    tasks, owners = [], []
    for key, g in groups.items():
        if g["val"]:
            for s in g["train"] + g["val"]:
                tasks.append((s, g["val"]))
                owners.append(key)
    with ProcessPoolExecutor(args.workers) as pool:
        rows = list(pool.map(_match_row, tasks, chunksize=8))

    by_group: dict[tuple, list[list[bool]]] = defaultdict(list)
    for key, row in zip(owners, rows, strict=True):
        by_group[key].append(row)
    ceiling = 0
    sampled = []  # per val crystal: fraction of same-composition training structures matching it
    print(f"{'composition':>12} {'val':>5} {'train':>6} {'best single':>12} {'train match':>12}")
    for key, matrix in sorted(by_group.items(), key=lambda kv: len(kv[0])):
        g = groups[key]
        m = np.array(matrix, dtype=bool)  # (candidates, val crystals)
        best = int(m.sum(axis=1).max())
        ceiling += best
        n_train = len(g["train"])
        if n_train:
            sampled += list(m[:n_train].mean(axis=0))
        label = g["val"][0].composition.formula.replace(" ", "")
        frac = f"{m[:n_train].mean():.3f}" if n_train else "-"
        print(f"{label:>12} {len(g['val']):>5} {n_train:>6} {best:>12} {frac:>12}")
    print(f"\n{n_val} test crystals in {len(by_group)} compositions")
    print(f"1-sample ceiling (one best prediction per composition): {100 * ceiling / n_val:.2f} %")
    if sampled:
        print(
            f"expected 1-sample rate of a sampler of the training distribution: "
            f"{100 * float(np.mean(sampled)):.2f} % "
            f"(over {len(sampled)} crystals with training data)"
        )


if __name__ == "__main__":
    main()
