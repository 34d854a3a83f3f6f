"""Workflow commands: ``dao csp``, ``dao submit``, ``dao query``, ``dao export``.

Heavy imports (torch, jobflow, atomate2) happen inside the commands so ``dao --help`` is fast.
"""

from __future__ import annotations

import functools
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from dao_flows.cli import app

console = Console()


def _wide_console() -> None:
    """Piped/captured output gets 140 columns instead of Rich's 80, so the table stays whole."""
    global console
    console = Console() if sys.stdout.isatty() else Console(width=140)


def input_errors_exit(func):  # type: ignore[no-untyped-def]
    """A DAOInputError ends the command with its message and exit code 2, not a traceback."""

    @functools.wraps(func)
    def wrapper(*args, **kwargs):  # type: ignore[no-untyped-def]
        from dao_core.errors import DAOInputError

        _wide_console()
        try:
            return func(*args, **kwargs)
        except DAOInputError as exc:
            console.print(f"[bold red]error:[/] {exc}")
            raise typer.Exit(2) from None

    return wrapper


def _flow_options(
    n: int,
    n_random: int,
    n_template: int,
    templates: str | None,
    steps: int | None,
    scale: float | None,
    formula_units: int | None,
    seed: int | None,
    relax: str,
    fmax: float,
    relax_steps: int,
    force_field: str,
    verify_top: int,
    device: str | None,
    model: str | None,
    guidance: str | None,
) -> dict[str, Any]:
    from dao_core.errors import DAOInputError

    if relax not in ("batched", "per-candidate"):
        raise DAOInputError(f"--relax must be 'batched' or 'per-candidate', not {relax!r}")
    opts: dict[str, Any] = dict(
        n=n,
        n_random=n_random,
        n_template=n_template,
        templates=templates,
        steps=steps,
        scale=scale,
        formula_units=formula_units,
        seed=seed,
        relax=relax,
        fmax=fmax,
        relax_steps=relax_steps,
        force_field=force_field,
        verify_top=verify_top,
        device=device,
        model=model,
    )
    if guidance is not None:
        opts["guidance"] = None if guidance.lower() == "none" else guidance
    return opts


# Options shared by `dao csp` and `dao submit`.
N = Annotated[int, typer.Option("--n", "-n", help="DAO-G candidates")]
NRandom = Annotated[int, typer.Option(help="pyxtal random candidates, ranked together")]
NTemplate = Annotated[int, typer.Option(help="template-substitution candidates")]
Templates = Annotated[
    str | None, typer.Option(help="template library: .npz, CDVAE CSV or CIF folder (default: MP)")
]
Steps = Annotated[
    int | None, typer.Option(help="diffusion sampling steps (default: the model's own)")
]
Scale = Annotated[float | None, typer.Option(help="DAO-P guidance scale w (0 = off; authors: 20)")]
FormulaUnits = Annotated[int | None, typer.Option(help="formula units per cell")]
Seed = Annotated[int | None, typer.Option(help="random seed (recorded in the result)")]
Relax = Annotated[str, typer.Option(help="batched | per-candidate")]
Fmax = Annotated[float, typer.Option(help="relaxation force threshold, eV/Å")]
RelaxSteps = Annotated[int, typer.Option(help="max relaxation steps per candidate")]
ForceField = Annotated[str, typer.Option(help="CHGNet (default) or SevenNet (per-candidate)")]
VerifyTop = Annotated[int, typer.Option(help="DFT-verify the K best (Quantum ESPRESSO)")]
Device = Annotated[str | None, typer.Option(help="cpu | cuda (default: GPU if present)")]
Model = Annotated[str | None, typer.Option(help="DAO-G checkpoint (name or path)")]
Guidance = Annotated[str | None, typer.Option(help="DAO-P checkpoint (name, path or 'none')")]


def result_table(result: Any, top: int | None = None) -> Table:
    """Rich table of a CSPResultDoc's ranked polymorphs."""
    table = Table(
        title=f"{result.formula}: {result.n_unique} unique / {result.n_candidates} "
        f"candidates ({result.relax_mode} relaxation)"
    )
    for col, kw in (
        ("#", {"justify": "right"}),
        ("formula", {"no_wrap": True}),
        ("space group", {"no_wrap": True}),
        ("E−Emin meV/atom", {"justify": "right"}),
        ("E eV/atom", {"justify": "right"}),
        ("DAO-P", {"justify": "right"}),
        ("source", {}),
        ("candidate", {}),
        ("relax", {}),
    ):
        table.add_column(col, **kw)
    polys = result.polymorphs[:top] if top else result.polymorphs
    for p in polys:
        table.add_row(
            str(p.rank),
            p.structure.composition.reduced_formula,
            f"{p.spacegroup_symbol} #{p.spacegroup_number}",
            f"{p.e_above_min_meV:.1f}",
            f"{p.energy_per_atom:.4f}",
            "—" if p.dao_p_score is None else f"{p.dao_p_score:.3f}",
            p.source,
            p.candidate_id + (f" (+{len(p.duplicates)})" if p.duplicates else ""),
            "ok"
            if p.implausible is None
            else ("unconv." if p.relax_status != "converged" else "implausible"),
        )
    return table


def _print_failures(result: Any) -> None:
    if result.failed:
        console.print(f"[yellow]{len(result.failed)} candidate(s) failed:[/]")
        for f in result.failed:
            console.print(f"  {f.candidate_id} ({f.stage}): {f.reason}")


@app.command()
@input_errors_exit
def csp(
    formula: Annotated[str, typer.Argument(help="composition, e.g. CsV3Sb5")],
    n: N = 20,
    n_random: NRandom = 40,
    n_template: NTemplate = 20,
    templates: Templates = None,
    steps: Steps = None,
    scale: Scale = None,
    formula_units: FormulaUnits = None,
    seed: Seed = None,
    relax: Relax = "batched",
    fmax: Fmax = 0.05,
    relax_steps: RelaxSteps = 300,
    force_field: ForceField = "CHGNet",
    verify_top: VerifyTop = 0,
    device: Device = None,
    model: Model = None,
    guidance: Guidance = None,
    out: Annotated[Path | None, typer.Option(help="folder for CIFs + plot")] = None,
    top: Annotated[int | None, typer.Option(help="rows to print / CIFs to write")] = None,
) -> None:
    """Predict crystal structures for FORMULA: DAO-G -> CHGNet relaxation -> ranking.

    Runs here on the DAO store (see `dao query`), prints the ranked polymorphs and writes CIFs
    and an energy-ranking plot to --out (default ./dao_csp_<formula>).
    """
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from dao_flows.flows import dao_csp_flow
    from dao_flows.local import run_flow
    from dao_flows.plots import plot_ranking
    from dao_flows.queries import write_structures
    from dao_flows.schemas import CSPResultDoc
    from dao_flows.stores import describe_store, get_store

    opts = _flow_options(
        n,
        n_random,
        n_template,
        templates,
        steps,
        scale,
        formula_units,
        seed,
        relax,
        fmax,
        relax_steps,
        force_field,
        verify_top,
        device,
        model,
        guidance,
    )
    flow = dao_csp_flow(formula, **opts)  # validates the input before any job runs
    store = get_store()
    n_jobs = len(flow.jobs)
    with Progress(
        TextColumn("[bold blue]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
        transient=False,
    ) as progress:
        task = progress.add_task(f"{formula}: starting", total=n_jobs)
        failures: list[str] = []

        def on_job(event: str, name: str) -> None:
            if event == "start":
                progress.update(task, description=f"{formula}: {name}")
            elif event == "finish":
                progress.advance(task)
            elif event == "fail":
                failures.append(name)
                progress.advance(task)

        result = run_flow(flow, store=store, on_job=on_job)
        progress.update(task, description=f"{formula}: done", completed=n_jobs)
    if result is None:
        console.print(
            "[bold red]error:[/] the flow produced no result; failed jobs: "
            + (", ".join(failures) or "unknown")
        )
        raise typer.Exit(1)
    if isinstance(result, dict):
        result = CSPResultDoc.model_validate(result)

    console.print(result_table(result, top))
    _print_failures(result)
    if result.verify_jobs:
        console.print(dft_table(result, store))
    out_dir = out or Path(f"dao_csp_{formula}")
    cifs = write_structures(result.polymorphs[:top] if top else result.polymorphs, out_dir, "cif")
    plot = plot_ranking(result, out_dir / "energy_ranking.png")
    t = result.timings
    console.print(
        f"timings: generation {t.get('generation_s', 0):.1f} s, relaxation "
        f"{t.get('relax_s', 0):.1f} s, ranking {t.get('ranking_s', 0):.2f} s"
    )
    console.print(f"wrote {len(cifs)} CIF(s) and {plot.name} to {out_dir}")
    console.print(f"stored as run {result.run_uuid} in {describe_store(store)}")


def dft_table(result: Any, store: Any) -> Table:
    """ML ranking next to the DFT (pw.x) energies of the verified top-k, and their agreement."""
    from scipy.stats import kendalltau

    from dao_flows.queries import dft_verifications

    rows = dft_verifications(result, store)
    done = [r for r in rows if r["success"]]
    best = min((r["dft_energy_per_atom"] for r in done), default=None)
    order = sorted(done, key=lambda r: r["dft_energy_per_atom"])
    dft_rank = {r["rank"]: i + 1 for i, r in enumerate(order)}
    title = "DFT verification (Quantum ESPRESSO)"
    if len(done) > 1:
        tau = kendalltau([r["rank"] for r in done], [dft_rank[r["rank"]] for r in done])[0]
        title += f": Kendall tau of ML vs DFT order = {tau:.2f}"
    table = Table("ML #", "candidate", "ML E eV/atom", "DFT #", "DFT E eV/atom",
                  "DFT E-Emin meV/atom", "status", title=title)  # fmt: skip
    for r in rows:
        ok = r["success"]
        table.add_row(
            str(r["rank"]), r["candidate_id"], f"{r['ml_energy_per_atom']:.4f}",
            str(dft_rank.get(r["rank"], "-")),
            f"{r['dft_energy_per_atom']:.4f}" if ok else "-",
            f"{1000 * (r['dft_energy_per_atom'] - best):.1f}" if ok else "-",
            "ok" if ok else f"failed: {r['failure_reason']}",
        )  # fmt: skip
    return table


@app.command()
@input_errors_exit
def submit(
    formula: Annotated[str, typer.Argument(help="composition, e.g. CsV3Sb5")],
    launchpad: Annotated[
        Path | None, typer.Option(help="my_launchpad.yaml (MongoDB); default: embedded LaunchPad")
    ] = None,
    launch: Annotated[bool, typer.Option(help="also run it now (rapidfire, this process)")] = False,
    launch_dir: Annotated[Path | None, typer.Option(help="where rapidfire runs jobs")] = None,
    n: N = 20,
    n_random: NRandom = 40,
    n_template: NTemplate = 20,
    templates: Templates = None,
    steps: Steps = None,
    scale: Scale = None,
    formula_units: FormulaUnits = None,
    seed: Seed = None,
    relax: Relax = "per-candidate",
    fmax: Fmax = 0.05,
    relax_steps: RelaxSteps = 300,
    force_field: ForceField = "CHGNet",
    verify_top: VerifyTop = 0,
    device: Device = None,
    model: Model = None,
    guidance: Guidance = None,
) -> None:
    """Add the CSP workflow for FORMULA to a FireWorks LaunchPad (run it with rlaunch)."""
    from dao_flows.fireworks import close_launchpad, submit_flow
    from dao_flows.fireworks import launch as run_launch
    from dao_flows.flows import dao_csp_flow
    from dao_flows.stores import describe_store, get_store

    if launchpad is not None and not launchpad.is_file():
        from dao_core.errors import DAOInputError

        raise DAOInputError(f"LaunchPad file {launchpad} does not exist")
    opts = _flow_options(
        n,
        n_random,
        n_template,
        templates,
        steps,
        scale,
        formula_units,
        seed,
        relax,
        fmax,
        relax_steps,
        force_field,
        verify_top,
        device,
        model,
        guidance,
    )
    flow = dao_csp_flow(formula, **opts)
    store = get_store()
    info = submit_flow(flow, launchpad_file=launchpad, store=store)
    lp = info["launchpad"]
    console.print(
        f"submitted workflow '{info['workflow']}' ({info['n_fireworks']} fireworks, "
        f"fw_ids {info['fw_ids'][0]}–{info['fw_ids'][-1]}); run uuid {flow.uuid}"
    )
    console.print(f"results will be stored in {describe_store(store)}")
    if launch:
        run_launch(lp, launch_dir=launch_dir)
        from dao_flows.fireworks import workflow_states

        states = workflow_states(lp, info["fw_ids"])
        done = sum(s == "COMPLETED" for s in states.values())
        console.print(f"launched: {done}/{len(states)} fireworks COMPLETED")
    if info["embedded_file"]:
        close_launchpad(lp)
        if not launch:
            console.print("run it on this machine with:")
            console.print(f"  export MONGOMOCK_SERVERSTORE_FILE={info['embedded_file']}")
            console.print("  rlaunch rapidfire")
    elif not launch:
        console.print(f"run it with: rlaunch -l {launchpad} rapidfire")


@app.command()
def query(
    formula: Annotated[str | None, typer.Argument(help="composition; omit: list runs")] = None,
    run: Annotated[str | None, typer.Option(help="show this run uuid")] = None,
    runs: Annotated[bool, typer.Option("--runs", help="list runs only")] = False,
    top: Annotated[int | None, typer.Option(help="rows to print")] = None,
) -> None:
    """Show CSP results from the store: the latest run's ranking for FORMULA, or all runs."""
    _wide_console()
    from dao_flows.queries import get_result, list_runs
    from dao_flows.stores import describe_store, get_store

    store = get_store()
    rows = list_runs(formula, store=store)
    if not rows:
        console.print(
            f"no CSP runs{' for ' + formula if formula else ''} in {describe_store(store)}"
        )
        raise typer.Exit(1)
    if runs or (formula is None and run is None):
        table = Table(title=f"CSP runs in {describe_store(store)}")
        for col in (
            "run uuid",
            "formula",
            "completed",
            "relax",
            "candidates",
            "unique",
            "failed",
            "best",
        ):
            table.add_column(col)
        for r in rows:
            table.add_row(
                str(r["run_uuid"]),
                str(r["formula"]),
                str(r["completed_at"])[:19],
                str(r["relax_mode"]),
                str(r["n_candidates"]),
                str(r["n_unique"]),
                str(r["n_failed"]),
                str(r["best_spacegroup"]),
            )
        console.print(table)
        return
    result = get_result(formula, run, store=store)
    if result is None:
        console.print(f"run {run} not found")
        raise typer.Exit(1)
    console.print(result_table(result, top))
    _print_failures(result)
    if result.verify_jobs:
        console.print(dft_table(result, store))
    console.print(f"run {result.run_uuid} ({len(rows)} run(s) for {result.reduced_formula})")


@app.command()
def export(
    formula: Annotated[str, typer.Argument(help="composition")],
    fmt: Annotated[str, typer.Option("--format", help="cif | poscar")] = "cif",
    out: Annotated[Path, typer.Option(help="output folder")] = Path("."),
    top: Annotated[int | None, typer.Option(help="only the K best")] = None,
    run: Annotated[str | None, typer.Option(help="run uuid (default: latest)")] = None,
) -> None:
    """Write the ranked structures of the latest run for FORMULA as CIF or POSCAR files."""
    from dao_flows.queries import export_structures

    if fmt.lower() not in ("cif", "poscar"):
        console.print(f"[bold red]error:[/] --format must be cif or poscar, not {fmt!r}")
        raise typer.Exit(2)
    paths = export_structures(formula, out, fmt.lower(), top=top, run_uuid=run)  # type: ignore[arg-type]
    if not paths:
        console.print(f"no CSP result for {formula}")
        raise typer.Exit(1)
    for p in paths:
        console.print(str(p))
    console.print(f"wrote {len(paths)} file(s) to {out}")
