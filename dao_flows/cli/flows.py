"""Workflow commands: ``dao csp``, ``dao submit``, ``dao query``, ``dao export``.

Heavy imports (torch, jobflow, atomate2) happen inside the commands so ``dao --help`` is fast.
"""

from __future__ import annotations

import functools
import inspect
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, ParamSpec, TypeVar

import typer
from rich.console import Console
from rich.table import Table

from dao_flows.cli import app

console = Console()
P = ParamSpec("P")
R = TypeVar("R")


def _wide_console() -> None:
    """Piped/captured output gets 140 columns instead of Rich's 80, so the table stays whole."""
    global console
    console = Console() if sys.stdout.isatty() else Console(width=140)


def input_errors_exit(func: Callable[P, R]) -> Callable[P, R]:
    """A DAOInputError ends the command with its message and exit code 2, not a traceback."""

    @functools.wraps(func)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        from dao_core.errors import DAOInputError

        _wide_console()
        try:
            return func(*args, **kwargs)
        except DAOInputError as exc:
            console.print(f"[bold red]error:[/] {exc}")
            raise typer.Exit(2) from None

    return wrapper


def store_errors_exit(func: Callable[P, R]) -> Callable[P, R]:
    """A job store whose server cannot be reached ends the command with exit code 1 and a
    message naming the server (never its password), not a pymongo traceback."""

    @functools.wraps(func)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        from pymongo.errors import ConnectionFailure

        from dao_flows.stores import StoreUnreachable, get_store, unreachable_message

        try:
            return func(*args, **kwargs)
        except (StoreUnreachable, ConnectionFailure) as exc:
            message = str(exc) if isinstance(exc, StoreUnreachable) else None
            console.print(f"[bold red]error:[/] {message or unreachable_message(get_store(), exc)}")
            raise typer.Exit(1) from None

    return wrapper


# Options shared by `dao csp` and `dao submit`.
# Defaults left as None are the Makers' own (dao_flows.flows.DAOCSPMaker.from_options).
N = Annotated[
    int | None, typer.Option("--n", "-n", help="DAO-G candidates (defaults: `dao defaults`)")
]
NRandom = Annotated[int | None, typer.Option(help="pyxtal random candidates, ranked together")]
NTemplate = Annotated[int | None, typer.Option(help="template-substitution candidates")]
Structures = Annotated[
    list[Path] | None,
    typer.Option("--structure", help="your own candidate (CIF/POSCAR); repeatable"),
]
Templates = Annotated[
    str | None,
    typer.Option(help="template library: .npz, CDVAE CSV, CIF folder or JSON docs (default: MP)"),
]
Steps = Annotated[
    int | None, typer.Option(help="diffusion sampling steps (default: the model's own)")
]
Scale = Annotated[float | None, typer.Option(help="DAO-P guidance scale w (0 = off; authors: 20)")]
FormulaUnits = Annotated[int | None, typer.Option(help="formula units per cell")]
Seed = Annotated[int | None, typer.Option(help="random seed (recorded in the result)")]
Relax = Annotated[str | None, typer.Option(help="batched | per-candidate")]
Fmax = Annotated[float | None, typer.Option(help="relaxation force threshold, eV/Å")]
RelaxSteps = Annotated[int | None, typer.Option(help="max relaxation steps per candidate")]
ForceField = Annotated[
    str | None, typer.Option(help="CHGNet (default) or SevenNet (per-candidate)")
]
VerifyTop = Annotated[int | None, typer.Option(help="DFT-verify the K best (Quantum ESPRESSO)")]
RefineTop = Annotated[
    int | None, typer.Option(help="re-rank the K best with SevenNet-l3i5 (0: off)")
]
Device = Annotated[str | None, typer.Option(help="cpu | cuda (default: GPU if present)")]
Model = Annotated[str | None, typer.Option(help="DAO-G checkpoint (name or path)")]
Guidance = Annotated[str | None, typer.Option(help="DAO-P checkpoint (name, path or 'none')")]


def _shared_flow_options(
    n: N = None, n_random: NRandom = None, n_template: NTemplate = None,
    templates: Templates = None, structures: Structures = None, steps: Steps = None,
    scale: Scale = None, formula_units: FormulaUnits = None, seed: Seed = None,
    relax: Relax = None, fmax: Fmax = None, relax_steps: RelaxSteps = None,
    force_field: ForceField = None, verify_top: VerifyTop = None,
    refine_top: RefineTop = None, device: Device = None,
    model: Model = None, guidance: Guidance = None,
) -> None:  # fmt: skip
    """The signature of the options `dao csp` and `dao submit` share (see flow_options)."""


def flow_options(command: Callable[..., R]) -> Callable[..., R]:
    """Declare the shared flow options once: the command's CLI signature gains them, and the
    command receives those the user set as ``options`` (dao_flows.flows.given_options)."""
    shared = inspect.signature(_shared_flow_options, eval_str=True).parameters
    own = inspect.signature(command, eval_str=True).parameters.values()
    own = [p for p in own if p.name != "options"]

    @functools.wraps(command)
    def wrapper(**kwargs: Any) -> R:
        from dao_flows.flows import given_options

        given = {name: kwargs.pop(name) for name in shared}
        return command(**kwargs, options=given_options(given))

    wrapper.__signature__ = inspect.Signature([*own, *shared.values()])  # type: ignore[attr-defined]
    wrapper.__annotations__ = {**_shared_flow_options.__annotations__, **command.__annotations__}
    return wrapper


def flow_command(command: Callable[..., R]) -> Callable[..., R]:
    """A command that runs or submits the CSP flow: the shared options, and input and store
    errors ending it with a message."""
    return app.command()(input_errors_exit(store_errors_exit(flow_options(command))))


Formula = Annotated[str, typer.Argument(help="composition, e.g. CsV3Sb5")]


def _print_result(result: Any, top: int | None, dft_rows: list[dict[str, Any]] | None) -> None:
    """Ranking table, failed candidates and the DFT check: what `csp` and `query` print."""
    from dao_flows.report import dft_table, result_table

    console.print(result_table(result, top))
    if result.failed:
        console.print(f"[yellow]{len(result.failed)} candidate(s) failed:[/]")
        for f in result.failed:
            console.print(f"  {f.candidate_id} ({f.stage}): {f.reason}")
    if dft_rows:
        console.print(dft_table(dft_rows))


@app.command()
def defaults() -> None:
    """The default of every `dao csp` / `dao submit` / `dao_csp_flow` option, read from the
    Makers that own them."""
    from dao_flows.flows import DAOCSPMaker, default_options

    table = Table("option", "default", "owner")
    for option, (value, owner) in default_options(DAOCSPMaker()).items():
        table.add_row(option, repr(value), owner)
    console.print(table)


@flow_command
def csp(
    formula: Formula,
    options: dict[str, Any],
    out: Annotated[Path | None, typer.Option(help="folder for CIFs, figures, summary")] = None,
    top: Annotated[int | None, typer.Option(help="rows to print / CIFs to write")] = None,
    xrd_top: Annotated[
        int | None, typer.Option(help="polymorphs in the XRD figure (default: the report's)")
    ] = None,
) -> None:
    """Predict crystal structures for FORMULA: DAO-G -> CHGNet relaxation -> ranking.

    Runs here on the DAO store (see `dao query`), prints the ranked polymorphs and writes to
    --out (default ./dao_csp_<formula>) CIFs, an energy-ranking plot, simulated XRD of the
    best, summary.md, and dao_csp.log with the libraries' warnings and logs.
    """
    from dao_flows.flows import dao_csp_flow
    from dao_flows.logs import library_output_to
    from dao_flows.queries import dft_verifications, write_structures
    from dao_flows.report import LOG_FILE, XRD_TOP, write_report
    from dao_flows.schemas import CSPResultDoc
    from dao_flows.stores import closing_connections, describe_store, get_store

    flow = dao_csp_flow(formula, **options)  # validates the input before any job runs
    store = get_store()
    where = describe_store(store)
    out_dir = out or Path(f"dao_csp_{formula}")
    console.print(f"run {flow.uuid} -> {where} (an interrupted run is not resumed: run again)")
    log_to = library_output_to(out_dir / LOG_FILE, console=console)
    with closing_connections(store), log_to as log:
        result, failures = _run_with_progress(flow, store, formula)
        if result is None:
            console.print(
                "[bold red]error:[/] the flow produced no result; failed jobs: "
                f"{', '.join(failures) or 'unknown'} (details in {log})"
            )
            raise typer.Exit(1)
        if isinstance(result, dict):
            result = CSPResultDoc.model_validate(result)
        dft_rows = dft_verifications(result, store) if result.verify_jobs else None
        _print_result(result, top, dft_rows)
        polys = result.polymorphs[:top] if top else result.polymorphs
        cifs = write_structures(polys, out_dir, "cif")
        files = write_report(
            result, out_dir, where, cifs, dft_rows=dft_rows, top=top,
            xrd_top=XRD_TOP if xrd_top is None else xrd_top,
        )  # fmt: skip
    t = result.timings
    console.print(
        f"timings: generation {t.get('generation_s', 0):.1f} s, relaxation "
        f"{t.get('relax_s', 0):.1f} s, ranking {t.get('ranking_s', 0):.2f} s"
        + (f", re-ranking {t['refine_s']:.1f} s" if "refine_s" in t else "")
    )
    console.print(
        f"wrote {len(cifs)} CIF(s), {', '.join(f.name for f in files.values())} and "
        f"{log.name} (library warnings and logs) to {out_dir}"
    )
    console.print(f"stored as run {result.run_uuid} in {where}")


def _run_with_progress(flow: Any, store: Any, formula: str) -> tuple[Any, list[str]]:
    """Run the flow here with a progress bar of its jobs; (flow output, failed job names)."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from dao_flows.local import run_flow

    n_jobs = len(flow.jobs)
    failures: list[str] = []
    with Progress(
        TextColumn("[bold blue]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
        transient=False,
        redirect_stdout=False,  # library prints go to the log file, not above the bar
        redirect_stderr=False,
    ) as progress:
        task = progress.add_task(f"{formula}: starting", total=n_jobs)

        def on_job(event: str, name: str) -> None:
            if event == "start":
                progress.update(task, description=f"{formula}: {name}")
            elif event in ("finish", "fail"):
                progress.advance(task)
            if event == "fail":
                failures.append(name)

        result = run_flow(flow, store=store, on_job=on_job)
        progress.update(task, description=f"{formula}: done", completed=n_jobs)
    return result, failures


@flow_command
def submit(
    formula: Formula,
    options: dict[str, Any],
    launchpad: Annotated[
        Path | None, typer.Option(help="my_launchpad.yaml (MongoDB); default: embedded LaunchPad")
    ] = None,
    launch: Annotated[bool, typer.Option(help="also run it now (rapidfire, this process)")] = False,
    launch_dir: Annotated[Path | None, typer.Option(help="where rapidfire runs jobs")] = None,
) -> None:
    """Add the CSP workflow for FORMULA to a FireWorks LaunchPad (run it with rlaunch)."""
    from dao_flows.fireworks import close_launchpad, submit_flow
    from dao_flows.fireworks import launch as run_launch
    from dao_flows.flows import dao_csp_flow
    from dao_flows.stores import describe_store, get_store

    if launchpad is not None and not launchpad.is_file():
        from dao_core.errors import DAOInputError

        raise DAOInputError(f"LaunchPad file {launchpad} does not exist")
    flow = dao_csp_flow(formula, **options)
    info = submit_flow(flow, launchpad_file=launchpad)  # the store: see submit_flow
    lp = info["launchpad"]
    console.print(
        f"submitted workflow '{info['workflow']}' ({info['n_fireworks']} fireworks, "
        f"fw_ids {info['fw_ids'][0]}–{info['fw_ids'][-1]}); run uuid {flow.uuid}"
    )
    console.print(f"results will be stored in {describe_store(get_store())}")
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
@store_errors_exit
def query(
    formula: Annotated[str | None, typer.Argument(help="composition; omit: list runs")] = None,
    run: Annotated[str | None, typer.Option(help="show this run uuid")] = None,
    runs: Annotated[bool, typer.Option("--runs", help="list runs only")] = False,
    top: Annotated[int | None, typer.Option(help="rows to print")] = None,
) -> None:
    """Show CSP results from the store: the latest run's ranking for FORMULA, or all runs."""
    _wide_console()
    from dao_flows.queries import dft_verifications, get_result, list_runs
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
    _print_result(result, top, dft_verifications(result, store) if result.verify_jobs else None)
    console.print(f"run {result.run_uuid} ({len(rows)} run(s) for {result.reduced_formula})")


@app.command()
@store_errors_exit
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
