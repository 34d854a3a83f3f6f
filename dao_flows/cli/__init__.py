"""The ``dao`` command line: model commands (train, sample, relax-dataset, benchmark), property
commands (finetune-property, predict) and workflow commands (csp, submit, query, export)."""

import typer

app = typer.Typer(
    name="dao",
    help="DAO crystal-structure prediction: DAO-G generation, DAO-P energies, jobflow workflows.",
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
)


@app.callback()
def main(
    threads: int | None = typer.Option(
        None, help="CPU threads for torch (default: the idle cores, measured at start)"
    ),
) -> None:
    """Set the CPU thread policy once per command (dao_core.threads)."""
    import os

    if threads is not None:
        os.environ["DAO_NUM_THREADS"] = str(threads)
    from dao_core.threads import configure_cpu_threads

    configure_cpu_threads()


from dao_flows.cli import benchmark_csp, flows, models, properties  # noqa: E402,F401  (register commands)
