"""`dao benchmark-csp`: the end-to-end CSP benchmark (dao_flows.benchmark_csp)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from dao_flows.cli import app
from dao_flows.cli.flows import (
    Device,
    N,
    NRandom,
    NTemplate,
    Seed,
    Templates,
    console,
    input_errors_exit,
)
from dao_flows.cli.models import Limit, Split


@app.command("benchmark-csp")
@input_errors_exit
def benchmark_csp(
    data: Annotated[Path, typer.Option(help="reference structures (CDVAE-layout CSV)")],
    n: N = None,
    n_random: NRandom = None,
    n_template: NTemplate = None,
    templates: Templates = None,
    split: Split = None,
    limit: Limit = None,
    sample: Annotated[
        int | None, typer.Option(help="a random N of the crystals (seeded by --seed)")
    ] = None,
    ids: Annotated[
        Path | None,
        typer.Option(help="only these material ids (a text file, one per line), in its order"),
    ] = None,
    seed: Seed = 0,
    shard: Annotated[
        str | None,
        typer.Option(help="I/N: every N-th chosen crystal from the I-th, for parallel runs"),
    ] = None,
    device: Device = None,
    json_out: Annotated[
        Path | None,
        typer.Option("--json", help="rows + summary, saved after each composition; resumes"),
    ] = None,
    save_structures: Annotated[
        bool, typer.Option(help="keep CIFs of the top polymorphs and the reference in the rows")
    ] = False,
) -> None:
    """Pool -> relaxation -> ranking per composition of DATA; top-1/top-5 success against the
    relaxed reference, by source, with time per composition."""
    import numpy as np
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn

    from dao_core.data import held_out_ids, load_csv
    from dao_core.errors import DAOInputError
    from dao_flows.benchmark_csp import rows_from_json, run_benchmark_csp, summarise, to_json
    from dao_flows.flows import DAOCSPMaker, default_options, given_options

    records = load_csv(data)
    if split is not None:
        keep = held_out_ids(split)
        records = [r for r in records if r.material_id in keep]
        if not records:  # never fall back to the whole file: it may be training data
            raise DAOInputError(f"--split {split}: none of its held-out ids is in {data}")
    records = records[:limit] if limit else records
    if sample is not None and sample < len(records):  # files are often sorted by size
        chosen = np.random.default_rng(seed).choice(len(records), sample, replace=False)
        records = [records[i] for i in sorted(chosen)]
    if ids is not None:
        wanted = [line.strip() for line in ids.read_text().splitlines() if line.strip()]
        by_id = {r.material_id: r for r in records}
        if missing := [i for i in wanted if i not in by_id]:
            raise DAOInputError(f"--ids {ids}: not in {data}: {', '.join(missing[:5])}")
        records = [by_id[i] for i in wanted]
    if shard is not None:
        index, _, count = shard.partition("/")
        if not (index.isdigit() and count.isdigit() and int(index) < int(count)):
            raise DAOInputError(f"--shard {shard}: expected I/N with 0 <= I < N")
        records = records[int(index) :: int(count)]
    # Only what was given goes to the flow (the rest are the Makers' defaults); the JSON
    # records every option as it ran.
    options = given_options(dict(n=n, n_random=n_random, n_template=n_template,
                                 templates=templates, seed=seed, device=device))  # fmt: skip
    ran_with = {k: v for k, (v, _) in default_options(DAOCSPMaker.from_options(**options)).items()}
    done = []
    if json_out and json_out.is_file():  # resume: keep the compositions already benchmarked
        done = rows_from_json(json.loads(json_out.read_text()))
        console.print(f"resuming: {len(done)} compositions already in {json_out}")

    def save(rows: list) -> None:
        bar.update(task, completed=len(rows), description=rows[-1].formula)
        if json_out:
            json_out.write_text(json.dumps(to_json(rows, summarise(rows), ran_with), indent=1))

    with Progress("{task.description}", BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  console=console) as bar:  # fmt: skip
        task = bar.add_task("compositions", total=len(records))
        rows, summary = run_benchmark_csp(
            records, options, progress=save, done=done, save_structures=save_structures
        )
    table = Table("tolerance", "top-1", "top-5", "top-1 by source", "top-1, one mix alone")
    for name in ("diffcsp", "cspbench"):
        by_source = summary[f"top1_by_source_{name}"]
        by_mix = summary[f"top1_by_mix_{name}"]
        table.add_row(
            name, f"{100 * summary[f'top1_{name}']:.1f} %",
            f"{100 * summary[f'top5_{name}']:.1f} %",
            ", ".join(f"{k} {v}" for k, v in by_source.items()) or "-",
            ", ".join(f"{k} {100 * v:.0f} %" for k, v in by_mix.items()) or "-",
        )  # fmt: skip
    console.print(table)
    console.print(
        f"{summary['compositions']} compositions, {summary['errors']} failed, "
        f"median {summary['median_seconds']:.0f} s each"
    )
    if json_out:
        json_out.write_text(json.dumps(to_json(rows, summary, ran_with), indent=1))
        console.print(f"rows and summary in {json_out}")
