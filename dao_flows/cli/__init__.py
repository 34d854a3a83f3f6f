"""The ``dao`` command line: model commands (train, sample, relax-dataset, benchmark) and
workflow commands (csp, submit, query, export)."""

import typer

app = typer.Typer(
    name="dao",
    help="DAO crystal-structure prediction: DAO-G generation, DAO-P energies, jobflow workflows.",
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
)

from dao_flows.cli import flows, models  # noqa: E402,F401  (register their commands)
