"""Match rates of DAO-G checkpoints on the recorded validation sets (the training log's table).

    python benchmarks/validation_suite.py --split docs/data/split-mp2025-seed0.json \
        --model base=dao-g-base --model new=runs/dao-g/final \
        --set mp20like=$DAO_DATASETS/mp_2025/le20.csv.gz:mp20like \
        --set perov5=$DAO_DATASETS/perov_5/val.csv --set carbon24=$DAO_DATASETS/carbon_24/val.csv \
        --samples 1,20 --seeds 0 --out val.csv
    python benchmarks/validation_suite.py ... --sampler step_lr=5e-6 \
        --sampler step_lr=5e-6,temperature=0.7,steps=250
    python benchmarks/validation_suite.py ... --guidance dao-p-base --scales 0,5,20,50

A set is NAME=DATA[:SUBSET]: the split's validation ids in DATA (a CSV or a ``dao preprocess``
file), or only those of its named subset (``val_sets`` in the split file). Every model samples
at its own sampler settings (``default``), or with the fields each ``--sampler`` overrides, and
at each energy-guidance scale w of ``--scales`` (0: unguided) with the ``--guidance`` DAO-P. One
row per (model, sampler, scale, set, samples, seed) is appended to ``--out`` as it is
measured; a table of all rows is printed at the end.
"""

from __future__ import annotations

import argparse
import csv
import itertools
import time
from dataclasses import replace
from pathlib import Path

from rich.console import Console
from rich.table import Table

from dao_core.benchmark import run_benchmark
from dao_core.checkpoint import load_model
from dao_core.data import held_out_ids, load_csv

FIELDS = ["model", "set", "crystals", "samples", "seed", "steps", "step_lr", "temperature",
          "scale", "match_rate", "rmse", "valid_fraction", "sampling_s", "matching_s",
          "device"]  # fmt: skip


def sampler_overrides(spec: str) -> dict[str, float]:
    """``step_lr=5e-6,temperature=0.7,steps=250`` -> SamplerSettings fields; ``default`` -> {}."""
    if spec == "default":
        return {}
    fields = dict(item.split("=", 1) for item in spec.split(","))
    return {k: int(v) if k == "steps" else float(v) for k, v in fields.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", action="append", required=True, help="NAME=CHECKPOINT")
    parser.add_argument("--set", action="append", required=True, help="NAME=DATA[:SUBSET]")
    parser.add_argument("--split", required=True, type=Path)
    parser.add_argument("--samples", default="1")
    parser.add_argument("--seeds", default="0")
    parser.add_argument("--limit", type=int, help="first N crystals of each set")
    parser.add_argument("--batch-size", type=int, default=4096)
    parser.add_argument(
        "--sampler", action="append", default=None, help="FIELD=VALUE,... or 'default'"
    )
    parser.add_argument("--guidance", help="DAO-P checkpoint for energy guidance (--scales)")
    parser.add_argument("--scales", default="0", help="guidance scales w, comma-separated")
    parser.add_argument("--out", type=Path, default=Path("validation.csv"))
    args = parser.parse_args()
    scales = [float(w) for w in args.scales.split(",")]
    if any(scales) and not args.guidance:
        parser.error("--scales above 0 need a --guidance DAO-P")
    guide = load_model(args.guidance) if args.guidance else None

    sets = {}
    for spec in args.set:
        name, data = spec.split("=", 1)
        path, _, subset = data.partition(":")
        keep = held_out_ids(f"{args.split}:{subset}" if subset else args.split)
        sets[name] = [r for r in load_csv(path) if r.material_id in keep][: args.limit]
    new_file = not args.out.exists()
    rows = []
    with args.out.open("a", newline="") as handle:
        writer = csv.DictWriter(handle, FIELDS)
        if new_file:
            writer.writeheader()
        for spec in args.model:
            label, checkpoint = spec.split("=", 1)
            model = load_model(checkpoint)
            variants = itertools.product(
                sets.items(), args.sampler or ["default"], map(int, args.samples.split(",")),
                scales,
            )  # fmt: skip
            for (name, records), sampler, samples, scale in variants:
                settings = replace(model.sampling, **sampler_overrides(sampler))
                for seed in map(int, args.seeds.split(",")):
                    started = time.perf_counter()
                    result = run_benchmark(
                        model, records, samples, guidance=guide if scale > 0 else None,
                        scale=scale, batch_size=args.batch_size, seed=seed, sampling=settings,
                    )  # fmt: skip
                    row = dict(
                        model=label, set=name, crystals=result.n_crystals, samples=samples,
                        seed=seed, steps=result.steps, step_lr=settings.step_lr,
                        temperature=settings.temperature, scale=scale,
                        match_rate=round(result.match_rate, 4),
                        rmse=result.rmse and round(result.rmse, 4),
                        valid_fraction=round(result.valid_fraction, 4),
                        sampling_s=result.sampling_s, matching_s=result.matching_s,
                        device=result.device,
                    )  # fmt: skip
                    writer.writerow(row)
                    handle.flush()
                    rows.append(row)
                    print(row, f"({time.perf_counter() - started:.0f} s)", flush=True)
    shown = FIELDS[: FIELDS.index("rmse") + 1]  # timings and device only in the CSV
    table = Table(*shown)
    for row in rows:
        table.add_row(
            *(f"{100 * row[k]:.2f} %" if k == "match_rate" else str(row[k]) for k in shown)
        )
    Console(width=140).print(table)


if __name__ == "__main__":
    main()
