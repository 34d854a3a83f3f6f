"""Model commands: train, relax-dataset, sample, benchmark, models."""

from __future__ import annotations

import json
import logging
from dataclasses import replace
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn
from rich.table import Table

from dao_flows.cli import app
from dao_flows.cli.flows import input_errors_exit

console = Console()


def _datasets(spec: str) -> list[tuple[Path, str | None]]:
    """``a.csv:label,b.csv,c.npz`` -> [(a.csv, 'label'), (b.csv, None), (c.npz, its label)]."""
    from dao_core.data import records_label

    out = []
    for item in filter(None, (s.strip() for s in spec.split(","))):
        path, _, label = item.partition(":")
        if not label and path.endswith(".npz") and Path(path).is_file():
            label = records_label(path) or ""
        out.append((Path(path), label or None))
    if not out:
        raise typer.BadParameter("no CSV given", param_hint="--data")
    return out


# Sampler settings saved with a model (`dao train`) or overriding its own (`dao benchmark`).
Split = Annotated[
    str | None,
    typer.Option(help="only the 'val' ids of this split JSON (SPLIT:NAME: a subset)"),
]
Limit = Annotated[int | None, typer.Option(help="first N crystals only")]
StepLr = Annotated[float | None, typer.Option(help="sampler corrector step (default: the model's)")]
Temperature = Annotated[
    float | None, typer.Option(help="sampler noise multiplier (default: the model's)")
]


def _sampler_overrides(
    step_lr: float | None, temperature: float | None, steps: int | None = None
) -> dict[str, float]:
    """The SamplerSettings fields given on the command line."""
    given = {"step_lr": step_lr, "temperature": temperature, "steps": steps}
    return {k: v for k, v in given.items() if v is not None}


@app.command()
@input_errors_exit
def train(
    model: Annotated[
        str, typer.Option(help="dao-g, dao-p, or dao-p-prop (see dao finetune-property)")
    ],
    data: Annotated[str, typer.Option(help="CSV[:label_column][,CSV[:label_column]...]")],
    out: Annotated[Path, typer.Option(help="output folder (checkpoints, split, log)")],
    preset: Annotated[str, typer.Option(help="paper | base | small | tiny")] = "base",
    elements: Annotated[
        str, typer.Option(help="learned (one vector per Z) | descriptors (chemistry-aware)")
    ] = "learned",
    init: Annotated[str | None, typer.Option(help="start from this checkpoint")] = None,
    steps: Annotated[int, typer.Option(help="optimiser steps")] = 10_000,
    batch_size: Annotated[int, typer.Option(help="structures per step per process")] = 128,
    lr: float = 5e-4,
    warmup: int = 500,
    weight_decay: float = 0.0,
    energy_loss: Annotated[str, typer.Option(help="mse | exp (authors')")] = "mse",
    val_fraction: float = 0.1,
    split: Annotated[
        Path | None, typer.Option(help="split JSON to reuse (default: make one, seeded)")
    ] = None,
    seed: int = 0,
    time_limit: Annotated[
        float | None, typer.Option(help="seconds, then save and stop (resume by rerunning)")
    ] = None,
    time_budget: Annotated[
        float | None, typer.Option(help="seconds for the whole run; the LR schedule follows it")
    ] = None,
    max_pairs: Annotated[
        int | None, typer.Option(help="cap on B x Nmax^2 per batch (default 2^20 on GPU)")
    ] = None,
    eval_every: int = 500,
    save_every: int = 1000,
    ema_decay: Annotated[
        float | None,
        typer.Option(help="average the weights (e.g. 0.999); the average is validated and final"),
    ] = None,
    step_lr: StepLr = None,
    temperature: Temperature = None,
    sample_steps: Annotated[
        int | None, typer.Option(help="default sampling steps saved with the model")
    ] = None,
    transform: Annotated[str, typer.Option(help="dao-p-prop target: identity | log1p")] = (
        "identity"
    ),
) -> None:
    """Train DAO-G (Stage I/II, fine-tuning) or DAO-P; resumes if OUT holds a run.
    ``--model dao-p-prop`` fine-tunes property heads on a DAO-P (``dao finetune-property``
    with its defaults, which has the further options)."""
    if model == "dao-p-prop":
        from dao_flows.cli.properties import finetune_property

        finetune_property(data=data, out=out, init=init or "dao-p-base", transform=transform,
                          seed=seed)  # fmt: skip
        return

    from dao_core.data import load_csv
    from dao_core.train import TrainConfig, split_datasets, standardise_per_dataset
    from dao_core.train import train as run_training

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    specs = _datasets(data)
    datasets = {str(p): load_csv(p, label) for p, label in specs}
    train_sets, val_sets, split_path = split_datasets(datasets, out, val_fraction, seed, split)
    cfg = TrainConfig(
        kind=model, preset=preset, elements=elements, out=str(out), init=init, max_steps=steps,
        batch_size=batch_size, lr=lr, warmup=warmup, weight_decay=weight_decay, seed=seed,
        energy_loss=energy_loss, time_limit=time_limit, time_budget=time_budget,
        max_pairs=max_pairs, eval_every=eval_every, save_every=save_every, ema_decay=ema_decay,
        sampling=_sampler_overrides(step_lr, temperature, sample_steps),
        record={"data": [f"{p}:{label or ''}" for p, label in specs],
                "split": str(split_path)},
    )  # fmt: skip
    labels = [label for _, label in specs if label]
    if model == "dao-p" and len(set(labels)) > 1:  # different energies: one scale per set
        train_records, cfg.per_dataset = standardise_per_dataset(train_sets)
        val_records, _ = standardise_per_dataset(val_sets)
        cfg.label_name, cfg.label_unit = "per-dataset standardised energy", "std. units"
    else:
        train_records = [r for rs in train_sets.values() for r in rs]
        val_records = [r for rs in val_sets.values() for r in rs]
        if labels:
            cfg.label_name = labels[0]
    console.print(f"{len(train_records)} training / {len(val_records)} validation structures")
    run_training(cfg, train_records, val_records)
    console.print(f"checkpoints in {out}")


@app.command()
@input_errors_exit
def preprocess(
    data: Annotated[str, typer.Argument(help="CSV[:label_column] in CDVAE layout")],
    out: Annotated[Path, typer.Option(help=".npz to write (use it wherever a CSV is taken)")],
    max_atoms: Annotated[
        int | None, typer.Option(help="drop larger crystals (default: dao_core's MAX_ATOMS)")
    ] = None,
) -> None:
    """Parse and canonicalise a CSV once into a compact file for training elsewhere."""
    from dao_core.data import load_csv, save_records

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    ((path, label),) = _datasets(data)
    if out.suffix != ".npz":
        raise typer.BadParameter("the output must end in .npz", param_hint="--out")
    limit = {"max_atoms": max_atoms} if max_atoms is not None else {}
    records = load_csv(path, label, cache_dir="", **limit)
    save_records(out, records, label)
    size = out.stat().st_size / 2**20
    console.print(f"{len(records)} structures -> {out} ({size:.1f} MiB)")


def dataset_name(entry: str) -> str:
    """A training-data entry of a checkpoint's record as a name: 'runs/pre/le20.npz:label' ->
    'le20', '.../perov_5/val.csv' -> 'perov_5' (a split's file takes its folder's name)."""
    path = Path(entry.rsplit(":", 1)[0].split()[-1]) if entry.strip() else Path()
    stem = path.name.split(".")[0]
    return path.parent.name if stem in {"train", "val", "test", "structures"} else stem


@app.command("relax-dataset")
@input_errors_exit
def relax_dataset(
    dao_p: Annotated[str, typer.Option("--dao-p", help="DAO-P checkpoint or bundled name")],
    data: Annotated[Path, typer.Option(help="CSV in CDVAE layout")],
    out: Annotated[Path, typer.Option(help="CSV to write (same columns, relaxed CIFs)")],
    label: Annotated[str | None, typer.Option(help="column of the stability window")] = None,
    window: Annotated[
        str, typer.Option(help="'low,high' label window to relax, or 'all'")
    ] = "0.08,0.5",
    relative_to_min: Annotated[
        bool, typer.Option(help="window on label - min(label), e.g. energy above the lowest")
    ] = False,
    steps: int = 5,
    lr: float = 1.0,
    batch_size: int = 100,
    device: str | None = None,
) -> None:
    """Relax mildly unstable structures of a dataset with DAO-P (L-BFGS on X and L)."""
    import pandas as pd

    from dao_core.checkpoint import load_model
    from dao_core.data import load_csv
    from dao_core.relaxation import relax_records

    model = load_model(dao_p, device=device)
    records = load_csv(data, label, canonical=False)
    bounds = None if window == "all" else tuple(float(x) for x in window.split(","))
    if relative_to_min and bounds is not None:
        low = min(r.energy for r in records if r.energy is not None)
        bounds = (bounds[0] + low, bounds[1] + low)
    relaxed, moved = relax_records(model, records, bounds, steps, lr, batch_size)  # type: ignore[arg-type]
    frame = pd.read_csv(data)
    frame = frame.set_index("material_id", drop=False).loc[[r.material_id for r in records]]
    frame["cif"] = [r.to_structure().to(fmt="cif") for r in relaxed]
    frame["dao_relaxed"] = moved
    out.parent.mkdir(parents=True, exist_ok=True)
    frame.reset_index(drop=True).to_csv(out)
    console.print(f"relaxed {int(moved.sum())} of {len(records)} structures -> {out}")


@app.command()
@input_errors_exit
def sample(
    formula: str,
    model: Annotated[
        str | None, typer.Option(help="DAO-G checkpoint or bundled name (default: $DAO_G_MODEL)")
    ] = None,
    n: Annotated[int, typer.Option(help="number of structures")] = 4,
    guidance: Annotated[str | None, typer.Option(help="DAO-P for energy guidance")] = None,
    scale: Annotated[float | None, typer.Option(help="guidance scale w")] = None,
    steps: Annotated[int | None, typer.Option(help="sampling steps (default: model's)")] = None,
    formula_units: int | None = None,
    seed: int | None = None,
    device: str | None = None,
    out: Annotated[Path, typer.Option(help="folder for the CIFs")] = Path("samples"),
) -> None:
    """Generate N structures for FORMULA and write them as CIFs."""
    from dao_core.csp import DEFAULT_SCALE, default_generator, generate
    from dao_core.metrics import structure_validity

    scale = DEFAULT_SCALE if scale is None else scale
    result = generate(formula, n, model or default_generator(), guidance, scale, steps,
                      formula_units, seed, device)  # fmt: skip
    out.mkdir(parents=True, exist_ok=True)
    table = Table("file", "formula", "space group", "volume / atom (A^3)", "valid")
    for i, structure in enumerate(result.structures):
        path = out / f"{structure.composition.reduced_formula}_{i:03d}.cif"
        structure.to(filename=str(path))
        symbol = structure.get_space_group_info(symprec=0.1)[0]
        table.add_row(
            path.name, structure.formula, symbol, f"{structure.volume / len(structure):.2f}",
            str(structure_validity(structure)),
        )  # fmt: skip
    (out / "provenance.json").write_text(json.dumps(result.provenance, indent=2))
    console.print(table)


@app.command()
@input_errors_exit
def benchmark(
    model: Annotated[str, typer.Option(help="DAO-G checkpoint or bundled name")],
    data: Annotated[Path, typer.Option(help="test CSV (CDVAE layout)")],
    samples: Annotated[int, typer.Option(help="samples per crystal (1 or 20)")] = 1,
    guidance: Annotated[str | None, typer.Option(help="DAO-P for energy guidance")] = None,
    scale: float = 0.0,
    steps: Annotated[int | None, typer.Option(help="sampling steps (default: model's)")] = None,
    step_lr: StepLr = None,
    temperature: Temperature = None,
    split: Split = None,
    limit: Limit = None,
    batch_size: int = 1024,
    seed: int = 0,
    device: str | None = None,
    json_out: Annotated[Path | None, typer.Option("--json", help="write results here")] = None,
    predictions: Annotated[
        Path | None, typer.Option(help="write the sampled structures here (.json.gz)")
    ] = None,
    compile: Annotated[
        bool, typer.Option(help="torch.compile the network (GPU; compiles once per batch shape)")
    ] = False,
) -> None:
    """CSP benchmark under the DiffCSP protocol: match rate, RMSE, validity, throughput."""
    from dao_core.benchmark import run_benchmark
    from dao_core.checkpoint import load_model
    from dao_core.data import held_out_ids, load_csv

    generator = load_model(model, device=device)
    guide = load_model(guidance, device=device) if guidance and scale > 0 else None
    sampling = replace(generator.sampling, **_sampler_overrides(step_lr, temperature))
    records = load_csv(data)
    if split is not None:
        keep = held_out_ids(split)
        records = [r for r in records if r.material_id in keep]
    records = records[:limit] if limit else records
    with Progress(
        "[progress.description]{task.description}", BarColumn(), MofNCompleteColumn(),
        TimeElapsedColumn(), console=console,
    ) as bar:  # fmt: skip
        task = bar.add_task("sampling", total=len(records) * samples)
        result = run_benchmark(
            generator, records, samples, guide, scale, steps, batch_size, seed,
            progress=lambda k: bar.advance(task, k), sampling=sampling, compile=compile,
        )  # fmt: skip
    table = Table("data", "crystals", "k", "match rate", "RMSE", "valid", "steps", "w",
                  "sampling s", "structures/s", "device")  # fmt: skip
    table.add_row(
        data.name, str(result.n_crystals), str(samples), f"{100 * result.match_rate:.2f} %",
        "-" if result.rmse is None else f"{result.rmse:.4f}",
        f"{100 * result.valid_fraction:.1f} %", str(result.steps), f"{result.scale:g}",
        f"{result.sampling_s:.1f}", f"{result.structures_per_s:.1f}", result.device,
    )  # fmt: skip
    console.print(table)
    if json_out:
        json_out.write_text(json.dumps({"data": str(data), **result.to_dict()}, indent=2))
    if predictions:
        result.save_predictions(predictions)


@app.command()
def models() -> None:
    """List the bundled models with their training data and hashes."""
    from dao_core.checkpoint import bundled_models, read_config
    from dao_core.diffusion import SamplerSettings

    table = Table("name", "kind", "preset (H x layers)", "sampler (step_lr, T, steps)", "sha256",
                  "trained on")  # fmt: skip
    for name in bundled_models():
        cfg = read_config(name)
        arch = cfg["crysformer"]
        sampler = SamplerSettings(**cfg.get("sampling", {}))
        table.add_row(
            name, cfg["kind"], f"{arch['hidden']} x {arch['layers']}",
            f"{sampler.step_lr:g}, {sampler.temperature:g}, {sampler.steps}"
            if cfg["kind"] == "dao-g"
            else "-",
            cfg["sha256"][:12],
            ", ".join(dataset_name(d) for d in cfg["record"].get("data", [])),
        )  # fmt: skip
    console.print(table)
