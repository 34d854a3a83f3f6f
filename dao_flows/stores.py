"""Where DAO workflow results live.

:func:`get_store` returns a jobflow ``JobStore``:

* if the user configured jobflow (``$JOBFLOW_CONFIG_FILE``, ``~/.jobflow.yaml`` or
  ``$JOBFLOW_JOB_STORE``), that store, unchanged (e.g. MongoDB);
* otherwise an embedded, persistent store needing no server: maggma ``MontyStore`` collections
  on SQLite (MontyDB) in :func:`data_dir` ``/store`` — ``~/.local/share/dao/store`` by default,
  ``$DAO_STORE_DIR`` when set — with a second collection as the ``data`` store for large
  objects (trajectories, per-step energies).

Documents are keyed by jobflow's (job uuid, index), so re-running the same flow object
replaces its documents instead of duplicating them; :class:`DAOJobStore` does the same for the
large objects in the ``data`` store (plain jobflow would leave the old ones as orphans).
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from jobflow import JobStore

DOCS_COLLECTION = "dao_outputs"
DATA_COLLECTION = "dao_outputs_data"


def data_dir() -> Path:
    """Per-user DAO data directory (``$XDG_DATA_HOME/dao`` or ``~/.local/share/dao``)."""
    base = os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share"
    return Path(base) / "dao"


def store_dir() -> Path:
    """Folder of the embedded store: ``$DAO_STORE_DIR`` or :func:`data_dir` ``/store``."""
    env = os.environ.get("DAO_STORE_DIR")
    return Path(env).expanduser() if env else data_dir() / "store"


def user_jobflow_config() -> str | None:
    """Where the user's jobflow store configuration comes from, or None if there is none."""
    if os.environ.get("JOBFLOW_JOB_STORE"):
        return "$JOBFLOW_JOB_STORE"
    path = os.environ.get("JOBFLOW_CONFIG_FILE") or "~/.jobflow.yaml"
    path = os.path.expanduser(path)
    if os.path.isfile(path) and os.path.getsize(path) > 0:
        from monty.serialization import loadfn

        try:
            if "JOB_STORE" in (loadfn(path) or {}):
                return path
        except Exception:  # noqa: BLE001 - let jobflow itself report a broken config
            return path
    return None


class DAOJobStore(JobStore):
    """A JobStore whose re-saves *replace* a job's large objects instead of adding to them.

    jobflow upserts the output document on (uuid, index) but gives every saved blob (e.g. a
    trajectory) a fresh ``blob_uuid``, so re-running a flow would leave the old blobs behind
    as orphans in the ``data`` store. Before saving, this store removes the blobs of the same
    (job uuid, index).
    """

    def update(self, docs, key=None, save=None):  # type: ignore[no-untyped-def]
        for doc in docs if isinstance(docs, list) else [docs]:
            uuid = doc.get("uuid") if isinstance(doc, dict) else getattr(doc, "uuid", None)
            index = doc.get("index") if isinstance(doc, dict) else getattr(doc, "index", None)
            if uuid is not None:
                old = {"job_uuid": uuid, "job_index": index}
                for store in self.additional_stores.values():
                    # (MontyDB cannot delete from a collection that was never written.)
                    if store.count(old):
                        store.remove_docs(old)
        return super().update(docs, key=key, save=save)


def embedded_store(path: str | Path | None = None) -> JobStore:
    """The server-less persistent store (MontyDB/SQLite) in ``path`` (default store_dir())."""
    from maggma.stores import MontyStore

    folder = Path(path) if path is not None else store_dir()
    folder.mkdir(parents=True, exist_ok=True)
    folder = folder.resolve()  # absolute: FireWorks workers may run elsewhere
    docs = MontyStore(DOCS_COLLECTION, database_path=str(folder), storage="sqlite", key="uuid")
    data = MontyStore(DATA_COLLECTION, database_path=str(folder), storage="sqlite", key="blob_uuid")
    return DAOJobStore(docs, additional_stores={"data": data})


def get_store(path: str | Path | None = None) -> JobStore:
    """The JobStore DAO workflows write to (see module docstring for the rules).

    An explicit ``path`` always selects the embedded store in that folder.
    """
    if path is None and user_jobflow_config() is not None:
        from jobflow import JobflowSettings

        # Fresh settings (not the import-time SETTINGS) so env changes made later count.
        return JobflowSettings().JOB_STORE
    return embedded_store(path)


def describe_store(store: JobStore) -> str:
    """Human-readable location of a store (for CLI output, logs and reports), credentials
    removed: maggma names a MongoURIStore by its full URI, password included."""
    return redact(getattr(store.docs_store, "name", type(store.docs_store).__name__))


def redact(text: str) -> str:
    """``text`` with the password of every ``scheme://user:password@host`` URI in it masked."""
    return re.sub(r"(\w[\w+.-]*://[^:/@\s]+):[^@/\s]+@", r"\1:***@", text)
