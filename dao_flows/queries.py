"""Reading CSP results back from the job store (maggma queries on the jobflow docs store).

A run's result is the output of its ranking job: a :class:`~dao_flows.schemas.CSPResultDoc`
stored with ``output.doc_type == "dao_csp_result"``. Formulas match on the reduced formula, so
``CsV3Sb5`` finds runs made for ``Cs2V6Sb10`` too.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pymatgen.core import Composition

from dao_flows.schemas import CSPResultDoc, RankedPolymorph
from dao_flows.stores import get_store

if TYPE_CHECKING:
    from jobflow import JobStore

RESULT_TYPE = "dao_csp_result"
_SUMMARY = [
    "uuid",
    "index",
    "completed_at",
    "output.run_uuid",
    "output.formula",
    "output.reduced_formula",
    "output.n_candidates",
    "output.n_relaxed",
    "output.n_unique",
    "output.relax_mode",
    "output.created_at",
    "output.polymorphs.spacegroup_symbol",
    "output.polymorphs.energy_per_atom",
    "output.failed.candidate_id",
]


# The fields `dao query` / `dao export` select on: indexed on MongoDB, so a store shared by
# many runs answers without a collection scan.
QUERY_INDEXES = ("output.doc_type", "output.reduced_formula", "output.run_uuid")


def _connected(store: JobStore | None) -> JobStore:
    from maggma.stores import MemoryStore, MongoStore, MontyStore

    store = store or get_store()
    store.connect()
    docs = store.docs_store
    # A MongoDB server; not the embedded MontyDB or in-memory stores built on MongoStore.
    if isinstance(docs, MongoStore) and not isinstance(docs, MontyStore | MemoryStore):
        for key in QUERY_INDEXES:
            docs.ensure_index(key)
    return store


def _criteria(formula: str | None, run_uuid: str | None) -> dict[str, Any]:
    crit: dict[str, Any] = {"output.doc_type": RESULT_TYPE}
    if formula:
        crit["output.reduced_formula"] = Composition(formula).reduced_formula
    if run_uuid:
        crit["output.run_uuid"] = run_uuid
    return crit


def list_runs(formula: str | None = None, store: JobStore | None = None) -> list[dict[str, Any]]:
    """One summary row per CSP run (optionally for one formula), newest first."""
    store = _connected(store)
    rows = []
    for doc in store.query(_criteria(formula, None), properties=_SUMMARY):
        out = doc.get("output", {})
        polys = out.get("polymorphs") or []
        rows.append(
            {
                "run_uuid": out.get("run_uuid"),
                "formula": out.get("formula"),
                "reduced_formula": out.get("reduced_formula"),
                "completed_at": doc.get("completed_at") or out.get("created_at"),
                "relax_mode": out.get("relax_mode"),
                "n_candidates": out.get("n_candidates"),
                "n_relaxed": out.get("n_relaxed"),
                "n_unique": out.get("n_unique"),
                "n_failed": len(out.get("failed") or []),
                "best_spacegroup": polys[0].get("spacegroup_symbol") if polys else None,
                "best_energy_per_atom": polys[0].get("energy_per_atom") if polys else None,
                "job_uuid": doc.get("uuid"),
            }
        )
    rows.sort(key=lambda r: str(r["completed_at"] or ""), reverse=True)
    # A refined run stores its ranking twice (before and after re-ranking): keep the newest.
    newest = {}
    for row in rows:
        newest.setdefault(row["run_uuid"], row)
    return list(newest.values())


def get_result(
    formula: str | None = None, run_uuid: str | None = None, store: JobStore | None = None
) -> CSPResultDoc | None:
    """The result document of ``run_uuid``, or of the latest run for ``formula``."""
    store = _connected(store)
    docs = list(store.query(_criteria(formula, run_uuid), properties=["output", "completed_at"]))
    if not docs:
        return None
    docs.sort(key=lambda d: str(d.get("completed_at") or ""), reverse=True)
    return CSPResultDoc.model_validate(_strip_monty(docs[0]["output"]))


def _strip_monty(obj: Any) -> Any:
    """Drop the '@module'/'@class' keys jobflow adds at the top of pydantic outputs."""
    if isinstance(obj, dict):
        return {k: v for k, v in obj.items() if k not in ("@module", "@class", "@version")}
    return obj


def ranked_structures(
    formula: str, run_uuid: str | None = None, store: JobStore | None = None
) -> list[RankedPolymorph]:
    """Ranked unique polymorphs of the latest run for ``formula`` (or of ``run_uuid``)."""
    result = get_result(formula, run_uuid, store)
    return result.polymorphs if result else []


def export_structures(
    formula: str,
    out_dir: str | Path,
    fmt: Literal["cif", "poscar"] = "cif",
    top: int | None = None,
    run_uuid: str | None = None,
    store: JobStore | None = None,
    symprec: float | None = 0.1,
) -> list[Path]:
    """Write the ranked structures of the latest run as CIF or POSCAR files; returns paths.

    Files are named ``rank01_<formula>_<spacegroup>_<candidate>.cif`` (or ``.vasp``). CIFs are
    symmetrised with ``symprec`` (None writes P1 cells).
    """
    result = get_result(formula, run_uuid, store)
    if result is None:
        return []
    return write_structures(
        result.polymorphs[:top] if top else result.polymorphs, out_dir, fmt, symprec=symprec
    )


def write_structures(
    polymorphs: list[RankedPolymorph],
    out_dir: str | Path,
    fmt: Literal["cif", "poscar"] = "cif",
    symprec: float | None = 0.1,
) -> list[Path]:
    """CIF/POSCAR files for ranked polymorphs (shared by ``dao export`` and ``dao csp``)."""
    from pymatgen.io.cif import CifWriter
    from pymatgen.io.vasp import Poscar

    fmt = fmt.lower()  # type: ignore[assignment]
    if fmt not in ("cif", "poscar"):
        raise ValueError(f"unknown format {fmt!r}; use 'cif' or 'poscar'")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for p in polymorphs:
        sg = p.spacegroup_symbol.replace("/", "_")
        stem = f"rank{p.rank:02d}_{p.structure.composition.reduced_formula}_{sg}_{p.candidate_id}"
        if fmt == "cif":
            path = out / f"{stem}.cif"
            try:
                CifWriter(p.structure, symprec=symprec).write_file(path)
            except Exception:  # noqa: BLE001 - symmetrisation can fail; P1 is still correct
                CifWriter(p.structure).write_file(path)
        else:
            path = out / f"{stem}.vasp"
            Poscar(p.structure, comment=f"{stem} E={p.energy_per_atom:.5f} eV/atom").write_file(
                path
            )
        paths.append(path)
    return paths


def dft_verifications(result: CSPResultDoc, store: JobStore | None = None) -> list[dict[str, Any]]:
    """The DFT verification documents of a run's top-k (``verify_top``), ML rank order.

    Each row: ML rank, candidate id, ML energy per atom, and the verification document's
    ``success``, ``energy_per_atom`` and ``failure_reason`` (``None`` if the job left no output).
    """
    store = _connected(store)
    rows = []
    for rank, uuid in enumerate(result.verify_jobs, start=1):
        polymorph = result.polymorphs[rank - 1]
        doc = store.query_one({"uuid": uuid}, properties=["output"], sort={"index": -1})
        output = (doc or {}).get("output") or {}
        rows.append(
            {
                "rank": rank,
                "candidate_id": polymorph.candidate_id,
                "ml_energy_per_atom": polymorph.energy_per_atom,
                "success": bool(output.get("success")),
                "dft_energy_per_atom": output.get("energy_per_atom"),
                "failure_reason": output.get("failure_reason") if output else "no output",
            }
        )
    return rows
