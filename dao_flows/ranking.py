"""Ranking: relaxed energies (+ DAO-P scores) -> de-duplicated polymorphs with space groups,
ranked by energy per atom, in ONE :class:`~dao_flows.schemas.CSPResultDoc` per run.

The ranking job runs with ``on_missing_references=OnMissing.NONE``: a relaxation job that
failed (or a FireWorks firework that fizzled) arrives here as ``None`` and is recorded as a
failed candidate instead of stopping the run.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from jobflow import Flow, Job, Maker, Response, job
from jobflow.core.job import JobConfig
from jobflow.core.reference import OnMissing
from pymatgen.analysis.structure_matcher import StructureMatcher
from pymatgen.core import Structure
from pymatgen.symmetry.analyzer import SpacegroupAnalyzer

from dao_flows.generation import check_structure
from dao_flows.schemas import (
    BatchedRelaxDoc,
    CandidateDoc,
    CSPResultDoc,
    FailedCandidate,
    GenerationDoc,
    RankedPolymorph,
    RelaxedCandidate,
    package_versions,
)

logger = logging.getLogger(__name__)


@dataclass
class _Outcome:
    candidate: CandidateDoc
    structure: Structure
    energy_per_atom: float
    converged: bool
    n_steps: int | None
    elapsed_s: float | None


def _get(obj: Any, *path: str) -> Any:
    """obj.a.b or obj['a']['b'] (job outputs arrive as models or, from raw stores, dicts)."""
    for key in path:
        if obj is None:
            return None
        obj = obj.get(key) if isinstance(obj, dict) else getattr(obj, key, None)
    return obj


def _as_structure(obj: Any) -> Structure | None:
    if obj is None or isinstance(obj, Structure):
        return obj
    if isinstance(obj, dict) and "lattice" in obj:
        return Structure.from_dict(obj)
    return None


def outcome_from_task_doc(candidate: CandidateDoc, doc: Any) -> tuple[_Outcome | None, str | None]:
    """Energy/structure of an atomate2-style relaxation output (force field, VASP, ...)."""
    structure = _as_structure(
        _get(doc, "output", "structure")
        or _get(doc, "output", "mol_or_struct")
        or _get(doc, "structure")
    )
    if structure is None:
        return None, "relaxation output has no structure"
    energy_pa = _get(doc, "output", "energy_per_atom")
    if energy_pa is None and _get(doc, "output", "energy") is not None:
        energy_pa = float(_get(doc, "output", "energy")) / len(structure)
    if energy_pa is None:
        return None, "relaxation output has no energy"
    state = _get(doc, "state")
    state = getattr(state, "value", state)
    if state is not None:  # the optimiser's own verdict (atomate2 TaskState)
        converged = str(state) == "successful"
    else:
        converged = bool(_get(doc, "is_force_converged"))
    return (
        _Outcome(
            candidate,
            structure,
            float(energy_pa),
            converged,
            _get(doc, "output", "n_steps"),
            _get(doc, "output", "elapsed_time"),
        ),
        None,
    )


def outcome_from_batched(
    candidate: CandidateDoc, result: RelaxedCandidate | None
) -> tuple[_Outcome | None, str | None]:
    if result is None:
        return None, "missing from the batched relaxation output"
    if result.status != "relaxed" or result.structure is None or result.energy_per_atom is None:
        return None, result.reason or f"relaxation {result.status}"
    return (
        _Outcome(
            candidate,
            result.structure,
            float(result.energy_per_atom),
            result.converged,
            result.n_steps,
            None,
        ),
        None,
    )


def sanity_issue(structure: Structure, energy_per_atom: float) -> str | None:
    """Reason to distrust a relaxed result, or None."""
    if not math.isfinite(energy_per_atom):
        return f"non-finite relaxed energy ({energy_per_atom})"
    issue = check_structure(structure)[0]
    return None if issue is None else f"relaxed structure: {issue}"


# Known polymorphs sit within a few hundred meV/atom of the ground state (MP's metastable
# structures: almost all below 0.2 eV/atom above the hull); far above the best candidate, a
# relaxed result is a trapped or broken cell, whatever its relaxation status.
MAX_E_ABOVE_BEST = 0.5  # eV/atom


def implausibility(e_above_best: float, converged: bool) -> str | None:
    """Why a ranked polymorph cannot be taken as a real structure, or None."""
    if e_above_best > MAX_E_ABOVE_BEST:
        return f"{e_above_best:.2f} eV/atom above the best (> {MAX_E_ABOVE_BEST})"
    if not converged:
        return "relaxation did not converge"
    return None


def spacegroup(structure: Structure, symprec: float) -> tuple[str, int]:
    try:
        sga = SpacegroupAnalyzer(structure, symprec=symprec)
        return sga.get_space_group_symbol(), int(sga.get_space_group_number())
    except Exception:  # noqa: BLE001 - spglib gives up on some distorted cells
        return "P1", 1


@dataclass
class RankingMaker(Maker):
    """Collect relaxations, de-duplicate, assign space groups, rank; one result doc per run.

    Parameters
    ----------
    symprec
        spglib tolerance (Å) for the space groups (pymatgen SpacegroupAnalyzer).
    matcher
        Keyword arguments of pymatgen's StructureMatcher used for de-duplication.
    score_model
        DAO-P checkpoint used to score the relaxed structures; None skips scoring.
    """

    name: str = "dao rank"
    symprec: float = 0.1
    matcher: dict[str, Any] = field(default_factory=dict)
    score_model: str | None = "default"
    device: str | None = None

    def __post_init__(self) -> None:
        if self.score_model == "default":
            from dao_flows.generation import default_guidance

            self.score_model = default_guidance()

    @job(config=JobConfig(on_missing_references=OnMissing.NONE))
    def make(
        self,
        generation: GenerationDoc | None,
        relaxations: list[Any] | BatchedRelaxDoc | None,
        run_uuid: str,
        relax_mode: str = "per-candidate",
        relax_jobs: list[dict[str, str]] | None = None,
        relax_settings: dict[str, Any] | None = None,
        verify_top: int = 0,
        dft_maker: Maker | None = None,
    ) -> Response:
        started = time.perf_counter()
        if generation is None:
            raise RuntimeError("the generation job produced no output; nothing to rank")
        candidates = generation.candidates
        failed: list[FailedCandidate] = []
        outcomes: list[_Outcome] = []
        relax_times: list[float] = []

        batched = isinstance(relaxations, BatchedRelaxDoc) or (
            isinstance(relaxations, dict) and relaxations.get("doc_type") == "dao_batched_relax"
        )
        if batched and isinstance(relaxations, dict):
            relaxations = BatchedRelaxDoc(**relaxations)
        by_id = (
            {r.candidate_id: r for r in relaxations.results} if batched else {}  # type: ignore[union-attr]
        )
        per_candidate = list(relaxations) if isinstance(relaxations, list) else []
        jobs_info = relax_jobs or []

        for c in candidates:
            info = jobs_info[c.index] if c.index < len(jobs_info) else {}
            if batched:
                out, why = outcome_from_batched(c, by_id.get(c.candidate_id))
            elif relaxations is None:
                out, why = None, "the batched relaxation job failed (no output)"
            else:
                doc = per_candidate[c.index] if c.index < len(per_candidate) else None
                if doc is None:
                    out = None
                    why = (
                        f"rejected before relaxation: {c.issue}"
                        if not c.valid
                        else f"relaxation job {info.get('name', '?')!r} failed: it left no "
                        "output in the job store (its log or FireWorks launch holds the "
                        "traceback)"
                    )
                else:
                    out, why = outcome_from_task_doc(c, doc)
            if out is None:
                stage = "generation" if not c.valid else "relaxation"
                failed.append(
                    FailedCandidate(
                        candidate_id=c.candidate_id,
                        source=c.source,
                        stage=stage,  # type: ignore[arg-type]
                        reason=why or "unknown",
                        job_uuid=info.get("uuid"),
                        job_name=info.get("name"),
                    )
                )
                continue
            issue = sanity_issue(out.structure, out.energy_per_atom)
            if issue is not None:
                failed.append(
                    FailedCandidate(
                        candidate_id=c.candidate_id,
                        source=c.source,
                        stage="ranking",
                        reason=issue,
                        job_uuid=info.get("uuid"),
                        job_name=info.get("name"),
                    )
                )
                continue
            if out.elapsed_s is not None:
                relax_times.append(float(out.elapsed_s))
            outcomes.append(out)

        # De-duplicate: lowest energy first, so each group is represented by its best member.
        outcomes.sort(key=lambda o: o.energy_per_atom)
        matcher = StructureMatcher(**self.matcher)
        groups: list[tuple[_Outcome, list[str]]] = []
        for o in outcomes:
            for rep, dups in groups:
                try:
                    same = matcher.fit(rep.structure, o.structure)
                except Exception:  # noqa: BLE001 - matcher can fail on degenerate cells
                    same = False
                if same:
                    dups.append(o.candidate.candidate_id)
                    break
            else:
                groups.append((o, []))

        scores: list[float | None] = [None] * len(groups)
        provenance_extra: dict[str, Any] = {}
        if self.score_model and groups:
            try:
                from dao_core.csp import score_energy
                from dao_flows.generation import cached_model

                raw = score_energy(
                    [rep.structure for rep, _ in groups],
                    model=cached_model(self.score_model, self.device),
                    device=self.device,
                )
                scores = [float(s) if np.isfinite(s) else None for s in raw]
            except Exception as exc:  # noqa: BLE001 - scores are informative, not essential
                logger.warning("DAO-P scoring of relaxed structures failed: %s", exc)
                provenance_extra["score_error"] = f"{type(exc).__name__}: {exc}"

        e_min = groups[0][0].energy_per_atom if groups else 0.0
        polymorphs = []
        for rank, ((rep, dups), score) in enumerate(zip(groups, scores, strict=True), start=1):
            symbol, number = spacegroup(rep.structure, self.symprec)
            polymorphs.append(
                RankedPolymorph(
                    rank=rank,
                    candidate_id=rep.candidate.candidate_id,
                    source=rep.candidate.source,
                    structure=rep.structure,
                    formula=rep.structure.composition.formula,
                    energy_per_atom=rep.energy_per_atom,
                    e_above_min_meV=round(1000.0 * (rep.energy_per_atom - e_min), 3),
                    spacegroup_symbol=symbol,
                    spacegroup_number=number,
                    dao_p_score=score,
                    relax_status="converged" if rep.converged else "not converged",
                    implausible=implausibility(rep.energy_per_atom - e_min, rep.converged),
                    n_relax_steps=rep.n_steps,
                    duplicates=dups,
                )
            )

        timings = {f"generation_{k}": v for k, v in generation.timings.items()}
        timings["generation_s"] = round(sum(generation.timings.values()), 4)
        if batched:
            timings["relax_s"] = float(relaxations.elapsed_s)  # type: ignore[union-attr]
        elif relax_times:
            timings["relax_s"] = round(sum(relax_times), 3)  # summed over jobs
            timings["relax_max_job_s"] = round(max(relax_times), 3)
        timings["ranking_s"] = round(time.perf_counter() - started, 4)

        provenance = {
            "generation": {k: v for k, v in generation.provenance.items() if k != "versions"},
            "relaxation": {"mode": relax_mode, **(relax_settings or {})},
            "ranking": {
                "symprec": self.symprec,
                "structure_matcher": self.matcher or "pymatgen defaults",
                "score_model": self.score_model,
                **provenance_extra,
            },
            "versions": generation.provenance.get("versions") or package_versions(),
        }
        if batched:
            provenance["relaxation"].update(
                {
                    "device": relaxations.device,  # type: ignore[union-attr]
                    "force_field_version": relaxations.force_field_version,  # type: ignore[union-attr]
                    "n_model_calls": relaxations.n_model_calls,  # type: ignore[union-attr]
                }
            )

        doc = CSPResultDoc(
            run_uuid=run_uuid,
            formula=generation.formula,
            reduced_formula=generation.reduced_formula,
            formula_units=generation.formula_units,
            n_atoms=generation.n_atoms,
            relax_mode=relax_mode,  # type: ignore[arg-type]
            polymorphs=polymorphs,
            failed=failed,
            n_candidates=len(candidates),
            n_relaxed=len(outcomes),
            n_unique=len(polymorphs),
            provenance=provenance,
            timings=timings,
        )

        addition = None
        if verify_top > 0 and dft_maker is not None and polymorphs:
            verify: list[Job | Flow] = []
            for p in polymorphs[:verify_top]:
                dft = dft_maker.make(p.structure)
                dft.name = f"verify rank-{p.rank} {p.candidate_id}"
                verify.append(dft)
            doc.verify_jobs = [j.uuid for j in verify]
            addition = Flow(verify, name=f"dao verify top-{verify_top} {generation.formula}")
        return Response(output=doc, addition=addition)
