"""Keep third-party chatter off a CLI run's terminal: it goes to a log file instead.

pymatgen, spglib, torch, CHGNet and jobflow warn, log and print while a CSP run works; on the
terminal that buries DAO's own progress and tables, in a file it is still there to debug with.
"""

from __future__ import annotations

import contextlib
import logging
import sys
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from rich.console import Console

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def _non_propagating_loggers() -> list[logging.Logger]:
    """Loggers with handlers of their own that bypass the root logger (torch's writes to
    stderr): the root's file handler never sees their records."""
    return [
        lg
        for lg in logging.root.manager.loggerDict.values()
        if isinstance(lg, logging.Logger) and not lg.propagate and lg.handlers
    ]


@contextlib.contextmanager
def library_output_to(
    path: str | Path, level: int = logging.INFO, console: Console | None = None
) -> Iterator[Path]:
    """Within the block, send warnings, library log records and stray prints to ``path``.

    Warnings go through :func:`logging.captureWarnings`; the root logger gets a file handler
    at ``level`` (so jobflow's INFO job lines land there too); non-propagating loggers have
    their handlers swapped for it; ``sys.stdout``/``sys.stderr`` (CHGNet prints a banner)
    write into the same file. All of it is restored on exit, so library use and tests are
    unaffected. ``console``, a rich Console that follows ``sys.stdout`` (DAO's own output),
    keeps writing to the terminal during the block and follows ``sys.stdout`` again after.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(path, mode="w", encoding="utf-8")
    handler.setFormatter(logging.Formatter(LOG_FORMAT))
    handler.setLevel(level)
    root = logging.getLogger()
    old_level = root.level
    swapped = {lg: lg.handlers for lg in _non_propagating_loggers()}
    showwarning = warnings.showwarning
    root.addHandler(handler)
    root.setLevel(min(old_level, level))
    for lg in swapped:
        lg.handlers = [handler]
    logging.captureWarnings(True)
    if console is not None:
        console.file = sys.stdout
    try:
        with contextlib.redirect_stdout(handler.stream), contextlib.redirect_stderr(handler.stream):
            yield path
    finally:
        if console is not None:
            console.file = None  # type: ignore[assignment]  # rich: None = sys.stdout of the day
        if warnings.showwarning is not showwarning:  # only undo what this block switched on
            logging.captureWarnings(False)
        for lg, handlers in swapped.items():
            lg.handlers = handlers
        root.setLevel(old_level)
        root.removeHandler(handler)
        handler.close()
