"""Run a CSP flow in this process (jobflow ``run_locally``) and return its result document."""

from __future__ import annotations

import logging
import re
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dao_flows.flows import dao_csp_flow
from dao_flows.schemas import CSPResultDoc

if TYPE_CHECKING:
    from jobflow import Flow, JobStore

# jobflow logs "Starting job - NAME (UUID)" / "Finished job - NAME (UUID)" at INFO level.
_JOB_LOG = re.compile(r"(Starting|Finished) job - (.*) \(([0-9a-f-]+)")


class _JobEvents(logging.Handler):
    """Turns jobflow's job log lines into ``callback(event, job_name)`` calls."""

    def __init__(self, callback: Callable[[str, str], None]) -> None:
        super().__init__(logging.INFO)
        self.callback = callback

    def emit(self, record: logging.LogRecord) -> None:
        msg = record.getMessage()
        m = _JOB_LOG.search(msg)
        if m:
            self.callback("start" if m.group(1) == "Starting" else "finish", m.group(2))
        elif "failed with exception" in msg:
            self.callback("fail", msg.split(" failed with exception")[0])


def run_flow(
    flow: Flow,
    store: JobStore | None = None,
    root_dir: str | Path | None = None,
    on_job: Callable[[str, str], None] | None = None,
) -> Any:
    """``run_locally(flow)`` on ``store`` (default :func:`dao_flows.stores.get_store`) and
    return the resolved flow output. Job working folders go to ``root_dir`` (a temporary
    folder by default, so nothing is left in the current directory).

    ``on_job(event, job_name)`` is called with event "start", "finish" or "fail".

    Job documents are written after their large objects, and a store whose server stops
    answering ends the run with :class:`dao_flows.stores.StoreUnreachable`
    (:class:`dao_flows.stores.FailFastJobStore`).
    """
    from jobflow import run_locally
    from jobflow.core.reference import OnMissing

    from dao_flows.stores import FailFastJobStore, get_store

    store = FailFastJobStore.wrapping(store or get_store())
    logger = logging.getLogger("jobflow")
    handler = _JobEvents(on_job) if on_job else None
    old_level = logger.level
    if handler is not None:
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
    try:
        with tempfile.TemporaryDirectory(prefix="dao_jobs_") as tmp:
            run_locally(
                flow,
                store=store,
                root_dir=root_dir or tmp,
                log=False,
                create_folders=root_dir is not None,
            )
    finally:
        if handler is not None:
            logger.removeHandler(handler)
            logger.setLevel(old_level)
    return flow.output.resolve(store=store, on_missing=OnMissing.NONE)


def run_dao_side(formula: str, **options: Any) -> tuple[Any, float]:
    """The whole DAO route for ``formula`` in this process on an in-memory store:
    generation -> batched CHGNet relaxation -> ranking. Returns (best structure, wall seconds).

    Used by ``benchmarks/qe_vs_dao.py`` to time DAO against a pw.x vc-relax.
    """
    import time

    options = {"n": 8, **options}
    started = time.perf_counter()
    result = run_in_memory(dao_csp_flow(formula, **options))
    return result.polymorphs[0].structure, time.perf_counter() - started


def run_in_memory(flow: Flow) -> CSPResultDoc:
    """Run a CSP flow in this process on an in-memory store; its :class:`CSPResultDoc`."""
    from jobflow import JobStore
    from maggma.stores import MemoryStore

    store = JobStore(MemoryStore(), additional_stores={"data": MemoryStore()})
    result = run_flow(flow, store=store)
    if isinstance(result, dict):
        result = CSPResultDoc.model_validate(result)
    if result is None or not result.polymorphs:
        raise RuntimeError(f"the flow {flow.name!r} produced no ranked structure")
    return result
