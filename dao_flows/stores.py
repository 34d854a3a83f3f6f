"""Where DAO workflow results live.

:func:`get_store` returns a jobflow ``JobStore``:

* if the user configured jobflow (``$JOBFLOW_CONFIG_FILE``, ``~/.jobflow.yaml`` or
  ``$JOBFLOW_JOB_STORE``), that store's docs and additional stores as configured (e.g.
  MongoDB), written through :class:`DAOJobStore`;
* otherwise an embedded, persistent store needing no server: maggma ``MontyStore`` collections
  on SQLite (MontyDB) in :func:`data_dir` ``/store`` — ``~/.local/share/dao/store`` by default,
  ``$DAO_STORE_DIR`` when set — with a second collection as the ``data`` store for large
  objects (trajectories, per-step energies).

Documents are keyed by jobflow's (job uuid, index), so re-running the same flow object
replaces its documents instead of duplicating them; :class:`DAOJobStore` does the same for the
large objects in the ``data`` store (plain jobflow would leave the old ones as orphans), and
writes a job's document only after its large objects, so a process killed mid-write never
leaves a document that points at missing data.
"""

from __future__ import annotations

import contextlib
import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

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
    """A JobStore that writes a job's document last and replaces its large objects on re-save.

    jobflow writes the output document first and its blobs (e.g. a trajectory) after: a
    process killed in between leaves a document whose blob reference resolves to nothing (the
    document cannot be loaded). Here the blobs go first and the document after them, so a kill
    can at worst leave an unreferenced blob. jobflow also gives every saved blob a fresh
    ``blob_uuid``, so re-running a flow would leave the old blobs behind as orphans: those of
    an earlier save of the same (job uuid, index) are removed once the new document is in.
    """

    @classmethod
    def wrapping(cls, store: JobStore) -> DAOJobStore:
        """The same docs and additional stores (and save/load settings) as ``store``."""
        return cls(store.docs_store, store.additional_stores, save=store.save, load=store.load)

    def update(self, docs, key=None, save=None):  # type: ignore[no-untyped-def]
        stale = self._saved_blobs(docs if isinstance(docs, list) else [docs])
        docs_store, deferred = self.docs_store, _DeferredUpdates()
        self.docs_store = deferred  # type: ignore[assignment]  # jobflow's docs write, held back
        try:
            super().update(docs, key=key, save=save)  # writes the blobs
        finally:
            self.docs_store = docs_store
        for batch, batch_key in deferred.calls:
            docs_store.update(batch, key=batch_key)
        for name, blob_uuids in stale.items():
            self.additional_stores[name].remove_docs({"blob_uuid": {"$in": blob_uuids}})

    def _saved_blobs(self, docs: list) -> dict[str, list[str]]:
        """blob uuids already stored for these (job uuid, index) pairs, per additional store."""
        stale: dict[str, list[str]] = {}
        for doc in docs:
            fields = doc if isinstance(doc, dict) else vars(doc)
            if fields.get("uuid") is None:
                continue
            old = {"job_uuid": fields["uuid"], "job_index": fields.get("index")}
            for name, store in self.additional_stores.items():
                # (MontyDB cannot query a collection that was never written.)
                if store.count(old):
                    found = store.query(old, properties=["blob_uuid"])
                    stale.setdefault(name, []).extend(b["blob_uuid"] for b in found)
        return stale


class _DeferredUpdates:
    """Stands in for the docs store during :meth:`DAOJobStore.update`: records the write."""

    def __init__(self) -> None:
        self.calls: list[tuple[Any, Any]] = []

    def update(self, docs: Any, key: Any = None) -> None:
        self.calls.append((docs, key))


class StoreUnreachable(BaseException):  # noqa: N818 - named for what happened
    """The job store's server stopped answering during a run in this process.

    A BaseException, not an Exception: jobflow's ``run_locally`` turns every Exception of a
    job into a failed job and goes on, and each later job would wait for the lost server again
    (``serverSelectionTimeoutMS``, 30 s by default) before failing the same way.
    """

    def __init__(self, store: JobStore, error: Exception) -> None:
        super().__init__(unreachable_message(store, error))


class FailFastJobStore(DAOJobStore):
    """:class:`DAOJobStore` for runs in this process: a lost server ends the run at once
    (:class:`StoreUnreachable`) instead of failing every remaining job in turn."""

    def update(self, docs, key=None, save=None):  # type: ignore[no-untyped-def]
        from pymongo.errors import ConnectionFailure

        try:
            return super().update(docs, key=key, save=save)
        except ConnectionFailure as exc:
            raise StoreUnreachable(self, exc) from exc

    def query(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        from pymongo.errors import ConnectionFailure

        try:
            yield from super().query(*args, **kwargs)
        except ConnectionFailure as exc:
            raise StoreUnreachable(self, exc) from exc


def server_address(store: JobStore) -> str:
    """host:port of the store's MongoDB server(s), from its URI or host/port settings."""
    docs = store.docs_store
    uri = getattr(docs, "uri", None)
    if uri:
        match = re.search(r"://(?:[^@/]*@)?([^/?]+)", uri)
        return match.group(1) if match else redact(uri)
    if getattr(docs, "host", None):
        return f"{docs.host}:{getattr(docs, 'port', 27017)}"
    return describe_store(store)


def unreachable_message(store: JobStore, error: Exception) -> str:
    """What to tell the user when the store's server cannot be reached (no credentials)."""
    reason = redact(str(error)).split(", Timeout:")[0].split(", Topology Description")[0]
    return (
        f"the MongoDB server {server_address(store)} of the job store ({describe_store(store)}) "
        f"cannot be reached: {reason}. Documents written before are kept. Start the server "
        "or check the network, then run the command again (an interrupted `dao csp` starts a "
        "new run: docs/mongodb.md)."
    )


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
        return DAOJobStore.wrapping(JobflowSettings().JOB_STORE)
    return embedded_store(path)


def describe_store(store: JobStore) -> str:
    """Human-readable location of a store (for CLI output, logs and reports), credentials
    removed: maggma names a MongoURIStore by its full URI, password included."""
    return redact(getattr(store.docs_store, "name", type(store.docs_store).__name__))


def redact(text: str) -> str:
    """``text`` with the password of every ``scheme://user:password@host`` URI in it masked."""
    return re.sub(r"(\w[\w+.-]*://[^:/@\s]+):[^@/\s]+@", r"\1:***@", text)


@contextlib.contextmanager
def closing_connections(store: JobStore) -> Iterator[JobStore]:
    """``store`` for one command, its connections closed afterwards: jobflow's ``run_locally``
    connects the store and leaves it open, so a MongoDB client would otherwise live on (and
    warn) until the garbage collector finds it."""
    try:
        yield store
    finally:
        for part in (store.docs_store, *store.additional_stores.values()):
            with contextlib.suppress(Exception):  # never connected (the run failed first)
                part.close()
