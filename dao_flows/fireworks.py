"""Running DAO flows with FireWorks.

``submit_flow(flow)`` converts a flow with jobflow's ``flow_to_workflow`` (the jobs write to
:func:`dao_flows.stores.get_store`, wherever the worker runs) and adds it to a LaunchPad:

* ``launchpad_file`` given: a normal LaunchPad (MongoDB) from that YAML file;
* none: an *embedded* LaunchPad on ``mongomock-persistence``: a JSON file
  (:func:`embedded_launchpad_file`, in the DAO store folder) that FireWorks loads when the
  environment variable ``MONGOMOCK_SERVERSTORE_FILE`` points at it. Then, on the same machine::

      export MONGOMOCK_SERVERSTORE_FILE=~/.local/share/dao/store/launchpad.json
      rlaunch rapidfire

  runs the workflow. mongomock-persistence reads the file when a client is created and writes
  it back when the client is released (or at exit), so the embedded LaunchPad serves one
  process at a time: submit, then launch; for concurrent workers use MongoDB.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dao_flows.stores import get_store, store_dir, user_jobflow_config

if TYPE_CHECKING:
    from fireworks import LaunchPad
    from jobflow import Flow, JobStore

ENV = "MONGOMOCK_SERVERSTORE_FILE"


def embedded_launchpad_file() -> Path:
    """``$MONGOMOCK_SERVERSTORE_FILE`` if set, else ``<store dir>/launchpad.json``."""
    env = os.environ.get(ENV)
    return Path(env).expanduser() if env else store_dir() / "launchpad.json"


@contextlib.contextmanager
def _mongomock_client() -> Iterator[None]:
    """Make FireWorks' LaunchPad use mongomock-persistence, whatever was imported before.

    FireWorks picks its MongoClient when ``fireworks.fw_config`` is first imported (only then
    does it look at MONGOMOCK_SERVERSTORE_FILE); jobflow or atomate2 may have imported it
    already, so the client class is swapped in explicitly while the LaunchPad connects.
    """
    import fireworks.core.launchpad as lp_module
    import mongomock.gridfs
    import mongomock_persistence

    mongomock.gridfs.enable_gridfs_integration()
    saved = lp_module.MongoClient
    lp_module.MongoClient = mongomock_persistence.MongoClient
    try:
        yield
    finally:
        lp_module.MongoClient = saved


def embedded_launchpad(path: str | Path | None = None) -> LaunchPad:
    """A LaunchPad on a mongomock-persistence file (created and initialised on first use)."""
    from fireworks import LaunchPad

    file = Path(path) if path is not None else embedded_launchpad_file()
    file = file.expanduser().resolve()
    file.parent.mkdir(parents=True, exist_ok=True)
    if not file.exists() or file.stat().st_size == 0:
        file.write_text("{}")
    # mongomock-persistence only reads the file name from the environment.
    os.environ[ENV] = str(file)
    with _mongomock_client():
        lp = LaunchPad()  # default db name, so a bare `rlaunch rapidfire` finds it
    if lp.fw_id_assigner.count_documents({}) == 0:
        lp.reset("", require_password=False)
        flush_launchpad(lp)
    return lp


def is_embedded(lp: LaunchPad) -> bool:
    return hasattr(getattr(lp.connection, "_store", None), "_to_file")


def flush_launchpad(lp: LaunchPad) -> None:
    """Write an embedded LaunchPad's state to its file now (no-op for MongoDB)."""
    if is_embedded(lp):
        lp.connection._store._to_file()


def close_launchpad(lp: LaunchPad) -> None:
    """Flush an embedded LaunchPad and stop it from writing again when garbage-collected.

    Call this before another process (``rlaunch``) uses the file: otherwise this process would
    later overwrite that process's results with its own, older, copy.
    """
    if is_embedded(lp):
        store = lp.connection._store
        store._to_file()
        finalizer = getattr(store, "_finalizer", None)
        if finalizer is not None:
            finalizer.detach()


def get_launchpad(launchpad_file: str | Path | None = None) -> LaunchPad:
    """LaunchPad from a YAML file (MongoDB, or mongomock if the file says so), else embedded."""
    if launchpad_file is None:
        return embedded_launchpad()
    from fireworks import LaunchPad

    return LaunchPad.from_file(str(launchpad_file))


def submit_flow(
    flow: Flow,
    launchpad: LaunchPad | None = None,
    launchpad_file: str | Path | None = None,
    store: JobStore | None = None,
) -> dict[str, Any]:
    """Add ``flow`` to a LaunchPad; returns ``{"fw_ids": ..., "launchpad": lp, ...}``.

    The workflow's jobs write to ``store`` if given, which then travels inside each firework.
    Otherwise: with a user jobflow configuration (e.g. MongoDB) the fireworks carry no store
    and each worker uses its own ``JOB_STORE`` (so credentials stay in the user's config file,
    never in the LaunchPad's documents); without one, the embedded store travels with them
    (a path), so workers on this machine need no configuration.
    """
    from jobflow.managers.fireworks import flow_to_workflow

    lp = launchpad or get_launchpad(launchpad_file)
    if store is None and user_jobflow_config() is None:
        store = get_store()
    wf = flow_to_workflow(flow, store=store)
    id_map = lp.add_wf(wf)
    flush_launchpad(lp)
    return {
        "launchpad": lp,
        "fw_ids": sorted(id_map.values()),
        "n_fireworks": len(wf.fws),
        "workflow": wf.name,
        "embedded_file": os.environ.get(ENV) if is_embedded(lp) else None,
    }


def launch(
    lp: LaunchPad,
    launch_dir: str | Path | None = None,
    nlaunches: int = 0,
    fworker: Any = None,
) -> None:
    """Run READY fireworks in this process (``rlaunch rapidfire``), then flush the LaunchPad."""
    from fireworks import FWorker
    from fireworks.core.rocket_launcher import rapidfire

    launch_dir = Path(launch_dir or Path.cwd())
    launch_dir.mkdir(parents=True, exist_ok=True)
    rapidfire(lp, fworker or FWorker(), m_dir=str(launch_dir), nlaunches=nlaunches)
    flush_launchpad(lp)


def workflow_states(lp: LaunchPad, fw_ids: list[int]) -> dict[int, str]:
    """State (COMPLETED, FIZZLED, ...) of each firework."""
    return {i: lp.get_fw_dict_by_id(i)["state"] for i in fw_ids}
