"""End-to-end CSP benchmark: does the top-ranked relaxed structure match the real one?

For each crystal of a CDVAE-layout CSV, the whole route runs on its composition and atom count
(candidate pool -> batched relaxation -> ranking, on an in-memory store); the reference is
relaxed with the same potential and settings, and success at k means one of the k best-ranked
polymorphs matches it, under DiffCSP's StructureMatcher tolerances and CSPBench's stricter ones.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from functools import cache
from typing import Any

import numpy as np
from pymatgen.analysis.structure_matcher import StructureMatcher
from pymatgen.core import Composition, Structure

from dao_core.data import CrystalRecord
from dao_core.metrics import MATCHER_KWARGS

TOLERANCES = {
    "diffcsp": MATCHER_KWARGS,
    "cspbench": dict(stol=0.3, angle_tol=5, ltol=0.2),
}
# Source mixes scored from one run: the best-ranked polymorph that one of the mix's sources
# proposed (as representative or merged duplicate) is that mix's rank 1.
MIXES = {
    "dao-g": {"dao-g"},
    "template": {"template"},
    "pyxtal": {"pyxtal"},
    "dao-g+pyxtal": {"dao-g", "pyxtal"},
    "dao-g+template": {"dao-g", "template"},
}


@dataclass
class CSPBenchmarkRow:
    material_id: str
    formula: str
    n_atoms: int
    seconds: float
    hit_rank: dict[str, int | None] = field(default_factory=dict)  # first match, per tolerance
    hit_source: dict[str, str | None] = field(default_factory=dict)
    e_best_minus_reference_meV: float | None = None  # < 0: the search beat the reference
    top1_by_mix: dict[str, dict[str, bool]] = field(default_factory=dict)  # tolerance -> mix
    # The ranked top (rank, source, energy, status, flag, matches), with CIFs of those and of
    # the relaxed reference when asked: ranking rules and potentials can be re-studied offline.
    top: list[dict[str, Any]] = field(default_factory=list)
    reference_cif: str | None = None
    error: str | None = None

    def success(self, tolerance: str, k: int) -> bool:
        rank = self.hit_rank.get(tolerance)
        return rank is not None and rank <= k


def cell_formula(record: CrystalRecord) -> str:
    """The formula of the cell as given (Na4Cl4, not NaCl): the flow keeps its atom count."""
    z, counts = np.unique(record.atomic_numbers, return_counts=True)
    return Composition(dict(zip(z.tolist(), counts.tolist(), strict=True))).formula.replace(" ", "")


def run_case(
    record: CrystalRecord, options: dict[str, Any], top: int, save_structures: bool = False
) -> CSPBenchmarkRow:
    from dao_flows.batched_fire import batched_fire_relax
    from dao_flows.flows import dao_csp_flow
    from dao_flows.local import run_in_memory
    from dao_flows.relax import BatchedRelaxMaker

    formula = cell_formula(record)
    row = CSPBenchmarkRow(record.material_id, formula, record.num_atoms, 0.0)
    started = time.perf_counter()
    try:
        result = run_in_memory(dao_csp_flow(formula, relax="batched", **options))
        # The flow's own relaxation settings (as recorded), so the reference relaxes alike.
        relaxation = result.provenance.get("relaxation", {})
        (reference,), _ = batched_fire_relax(
            [record.to_structure()], _chgnet(options.get("device")),
            fmax=relaxation.get("fmax", BatchedRelaxMaker.fmax),
            steps=relaxation.get("steps", BatchedRelaxMaker.steps),
            relax_cell=relaxation.get("relax_cell", BatchedRelaxMaker.relax_cell),
        )  # fmt: skip
        polymorphs = result.polymorphs[:top]
        target: Structure = reference.structure or record.to_structure()
        matchers = {name: StructureMatcher(**tolerance) for name, tolerance in TOLERANCES.items()}

        @cache
        def fits(name: str, rank: int) -> bool:  # each polymorph matched once per tolerance
            return _fits(matchers[name], result.polymorphs[rank - 1].structure, target)

        matches = {name: [fits(name, p.rank) for p in polymorphs] for name in TOLERANCES}
        row.top = [
            dict(
                rank=p.rank, source=p.source, candidate_id=p.candidate_id,
                energy_per_atom=p.energy_per_atom, relax_status=p.relax_status,
                implausible=p.implausible, duplicates=p.duplicates,
                matches={name: hits[i] for name, hits in matches.items()},
                **({"cif": p.structure.to(fmt="cif")} if save_structures else {}),
            )
            for i, p in enumerate(polymorphs)
        ]  # fmt: skip
        if save_structures:
            row.reference_cif = target.to(fmt="cif")
        for name in TOLERANCES:
            hit = next((p for p, fit in zip(polymorphs, matches[name], strict=True) if fit), None)
            row.hit_rank[name] = hit.rank if hit else None
            row.hit_source[name] = hit.source if hit else None
            row.top1_by_mix[name] = {
                mix: first is not None and fits(name, first.rank)
                for mix, first in _first_by_mix(result.polymorphs).items()
            }
        if reference.energy_per_atom is not None:
            # the lowest plausible energy of the ranking potential (re-ranking may put
            # another polymorph first)
            plausible = [p for p in result.polymorphs if p.implausible is None]
            best = min(p.energy_per_atom for p in plausible or result.polymorphs[:1])
            row.e_best_minus_reference_meV = round(1000 * (best - reference.energy_per_atom), 1)
    except Exception as exc:  # noqa: BLE001 - one failed composition must not end the benchmark
        row.error = f"{type(exc).__name__}: {exc}"
    row.seconds = round(time.perf_counter() - started, 2)
    return row


def _first_by_mix(polymorphs: Sequence[Any]) -> dict[str, Any]:
    """Per source mix, the best-ranked polymorph one of its sources proposed (None if none)."""

    def sources(p: Any) -> set[str]:
        return {p.source, *(cid.rsplit("-", 1)[0] for cid in p.duplicates)}

    return {
        mix: next((p for p in polymorphs if sources(p) & members), None)
        for mix, members in MIXES.items()
    }


@cache
def _chgnet(device: str | None) -> Any:
    from dao_flows.batched_fire import load_chgnet

    return load_chgnet(device)


def _fits(matcher: StructureMatcher, a: Structure, b: Structure) -> bool:
    try:
        return bool(matcher.fit(a, b))
    except Exception:  # noqa: BLE001 - degenerate cells
        return False


def summarise(rows: Sequence[CSPBenchmarkRow]) -> dict[str, Any]:
    """Top-1 / top-5 success per tolerance and by source of the matching polymorph."""
    n = len(rows)
    out: dict[str, Any] = {"compositions": n, "errors": sum(r.error is not None for r in rows)}
    for name in TOLERANCES:
        out[f"top1_{name}"] = sum(r.success(name, 1) for r in rows) / n if n else 0.0
        out[f"top5_{name}"] = sum(r.success(name, 5) for r in rows) / n if n else 0.0
        sources: dict[str, int] = {}
        for r in rows:
            if r.success(name, 1):
                sources[r.hit_source[name] or "?"] = sources.get(r.hit_source[name] or "?", 0) + 1
        out[f"top1_by_source_{name}"] = sources
        scored = [r.top1_by_mix[name] for r in rows if name in r.top1_by_mix]
        out[f"top1_by_mix_{name}"] = {
            mix: sum(hits[mix] for hits in scored) / len(scored) for mix in MIXES if scored
        }
    out["compositions_by_mix"] = sum(bool(r.top1_by_mix) for r in rows)
    out["median_seconds"] = float(np.median([r.seconds for r in rows])) if n else 0.0
    return out


def run_benchmark_csp(
    records: Sequence[CrystalRecord],
    options: dict[str, Any],
    top: int = 5,
    progress: Callable[[list[CSPBenchmarkRow]], None] | None = None,
    done: Sequence[CSPBenchmarkRow] = (),
    save_structures: bool = False,
) -> tuple[list[CSPBenchmarkRow], dict[str, Any]]:
    """Rows for ``records`` (those already in ``done`` are kept, not rerun); ``progress`` gets
    the rows so far after each composition (to save them: a killed run loses nothing)."""
    finished = {r.material_id for r in done}
    rows = list(done)
    for record in records:
        if record.material_id in finished:
            continue
        rows.append(run_case(record, options, top, save_structures))
        if progress:
            progress(rows)
    return rows, summarise(rows)


def to_json(rows: Sequence[CSPBenchmarkRow], summary: dict[str, Any], options: dict) -> dict:
    return {"summary": summary, "options": options, "rows": [asdict(r) for r in rows]}


def rows_from_json(doc: dict[str, Any]) -> list[CSPBenchmarkRow]:
    return [CSPBenchmarkRow(**row) for row in doc.get("rows", [])]
