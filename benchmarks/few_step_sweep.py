"""Match rate against the number of sampling steps, per bundled DAO-G, with seeds.

    python benchmarks/few_step_sweep.py --out sweep \
        --set perov5=dao-g-perov5:$DAO_DATASETS/perov_5/val.csv \
        --set carbon24=dao-g-carbon24:$DAO_DATASETS/carbon_24/val.csv \
        --set mp20=dao-g-base:$DAO_DATASETS/mp_20_slice/val.csv \
        --split docs/data/split-seed0.json --steps 50,100,250,500,1000 --seeds 0,1,2

Each set is NAME=MODEL:CSV; with ``--split`` only the split's validation ids of a CSV are used
(a CSV with none of them, such as the held-out MP-20 slice validation file, is used whole).
Strided schedules keep the trained noise levels (dao_core.diffusion.step_table); the
``scaled`` corrector multiplies the model's Langevin step by the stride, capped at
``--corrector-cap``, so fewer steps keep the same corrector work. Writes ``sweep.csv`` (one row
per run, appended as it goes), ``few_step.png`` and prints a table of mean +- s.d. over seeds.
"""

from __future__ import annotations

import argparse
import csv
import time
from collections import defaultdict
from dataclasses import replace
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.table import Table

from dao_core.benchmark import run_benchmark
from dao_core.checkpoint import load_model
from dao_core.data import load_csv, load_split

FIELDS = ["set", "model", "steps", "corrector", "step_lr", "seed", "crystals", "match_rate",
          "rmse", "sampling_s", "structures_per_s", "matching_s", "device"]  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--set", action="append", required=True, help="NAME=MODEL:CSV")
    parser.add_argument("--split", type=Path)
    parser.add_argument("--steps", default="50,100,250,500,1000")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--correctors", default="plain,scaled")
    parser.add_argument("--corrector-cap", type=float, default=4.0)
    parser.add_argument("--batch-size", type=int, default=2048)
    parser.add_argument("--time-limit", type=float, default=1e9, help="stop starting runs (s)")
    parser.add_argument("--out", type=Path, default=Path("sweep"))
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    keep = set(load_split(args.split)["val"]) if args.split else None
    started = time.perf_counter()
    path = args.out / "sweep.csv"
    new_file = not path.exists()
    with path.open("a", newline="") as handle:
        writer = csv.DictWriter(handle, FIELDS)
        if new_file:
            writer.writeheader()
        for spec in args.set:
            name, rest = spec.split("=", 1)
            model_name, csv_path = rest.split(":", 1)
            model = load_model(model_name)
            records = load_csv(csv_path)
            held_out = [r for r in records if keep and r.material_id in keep]
            records = held_out or records
            for steps in map(int, args.steps.split(",")):
                stride = model.schedule.steps / steps
                for corrector in args.correctors.split(","):
                    if corrector == "scaled" and stride == 1:
                        continue
                    factor = min(stride, args.corrector_cap) if corrector == "scaled" else 1.0
                    settings = replace(model.sampling, step_lr=model.sampling.step_lr * factor)
                    for seed in map(int, args.seeds.split(",")):
                        if time.perf_counter() - started > args.time_limit:
                            return
                        result = run_benchmark(
                            model, records, steps=steps, batch_size=args.batch_size,
                            seed=seed, sampling=settings,
                        )  # fmt: skip
                        row = dict(
                            set=name, model=model_name, steps=steps, corrector=corrector,
                            step_lr=settings.step_lr, seed=seed, crystals=result.n_crystals,
                            match_rate=result.match_rate, rmse=result.rmse,
                            sampling_s=result.sampling_s,
                            structures_per_s=result.structures_per_s,
                            matching_s=result.matching_s, device=result.device,
                        )  # fmt: skip
                        writer.writerow(row)
                        handle.flush()
                        print(row, flush=True)
    report(path, args.out / "few_step.png")


def report(path: Path, png: Path) -> None:
    """Mean +- s.d. over seeds per (set, corrector, steps): a table and a plot."""
    groups: dict[tuple[str, str, int], list[float]] = defaultdict(list)
    with path.open() as handle:
        for row in csv.DictReader(handle):
            groups[row["set"], row["corrector"], int(row["steps"])].append(
                100 * float(row["match_rate"])
            )
    table = Table("set", "corrector", "steps", "seeds", "match rate @1 (%)")
    for (name, corrector, steps), rates in sorted(groups.items()):
        sd = np.std(rates, ddof=1) if len(rates) > 1 else float("nan")
        cell = f"{np.mean(rates):.2f} ± {sd:.2f}"
        table.add_row(name, corrector, str(steps), str(len(rates)), cell)
    Console(width=120).print(table)

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sets = sorted({k[0] for k in groups})
    fig, axes = plt.subplots(1, len(sets), figsize=(4.2 * len(sets), 3.4), squeeze=False)
    for ax, name in zip(axes[0], sets, strict=True):
        for corrector in sorted({k[1] for k in groups if k[0] == name}):
            keys = sorted(k for k in groups if k[0] == name and k[1] == corrector)
            baseline = groups.get((name, "plain", 1000))
            if corrector == "scaled" and baseline:  # the 1000-step point is shared
                keys = keys + [(name, "plain", 1000)]
            steps = [k[2] for k in keys]
            mean = [np.mean(groups[k]) for k in keys]
            sd = [np.std(groups[k], ddof=1) if len(groups[k]) > 1 else 0 for k in keys]
            ax.errorbar(steps, mean, yerr=sd, marker="o", capsize=3, label=f"{corrector} corrector")
        ax.set_xscale("log")
        ax.set_xlabel("sampling steps")
        ax.set_ylabel("match rate @1 (%)")
        ax.set_title(name)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(png, dpi=130)


if __name__ == "__main__":
    main()
