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
from jobflow import Maker, Response
from pymatgen.analysis.structure_matcher import StructureMatcher
from pymatgen.core import Structure
from pymatgen.symmetry.analyzer import SpacegroupAnalyzer

from dao_flows.generation import check_structure
from dao_flows.jobs import ranking_job
from dao_flows.plausibility import TIER, classify, reference_energy
from dao_flows.schemas import (
    STRUCTURE_FIELDS,
    BatchedRelaxDoc,
    CandidateDoc,
    CSPResultDoc,
    FailedCandidate,
    GenerationDoc,
    RankedPolymorph,
    RelaxedCandidate,
    package_versions,
)
from dao_flows.verification import with_verification

logger = logging.getLogger(__name__)


@dataclass
class Outcome:
    """One candidate's relaxation, as the ranking needs it (energy in eV/atom)."""

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


def outcome_from_task_doc(candidate: CandidateDoc, doc: Any) -> tuple[Outcome | None, str | None]:
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
        Outcome(
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
) -> tuple[Outcome | None, str | None]:
    if result is None:
        return None, "missing from the batched relaxation output"
    if result.status != "relaxed" or result.structure is None or result.energy_per_atom is None:
        return None, result.reason or f"relaxation {result.status}"
    return (
        Outcome(
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


def spacegroup(structure: Structure, symprec: float) -> tuple[str, int]:
    try:
        sga = SpacegroupAnalyzer(structure, symprec=symprec)
        return sga.get_space_group_symbol(), int(sga.get_space_group_number())
    except Exception:  # noqa: BLE001 - spglib gives up on some distorted cells
        return "P1", 1


@dataclass
class Relaxations:
    """The relaxation results of one run in one shape, whichever relax mode made them: one
    batched document, or one task document (None if its job failed) per candidate."""

    batched: BatchedRelaxDoc | None = None
    per_candidate: list[Any] | None = None
    job_info: list[dict[str, str]] = field(default_factory=list)
    by_id: dict[str, RelaxedCandidate] = field(default_factory=dict)  # batched, by candidate

    def __post_init__(self) -> None:
        if self.batched is not None:
            self.by_id = {r.candidate_id: r for r in self.batched.results}

    @classmethod
    def of(cls, relaxations: Any, job_info: list[dict[str, str]] | None = None) -> Relaxations:
        if isinstance(relaxations, dict) and relaxations.get("doc_type") == "dao_batched_relax":
            relaxations = BatchedRelaxDoc(**relaxations)  # from a raw store
        if isinstance(relaxations, BatchedRelaxDoc):
            return cls(batched=relaxations, job_info=job_info or [])
        per_candidate = list(relaxations) if isinstance(relaxations, list) else None
        return cls(per_candidate=per_candidate, job_info=job_info or [])

    def info(self, c: CandidateDoc) -> dict[str, str]:
        return self.job_info[c.index] if c.index < len(self.job_info) else {}

    def outcome(self, c: CandidateDoc) -> tuple[Outcome | None, str | None]:
        if self.batched is not None:
            return outcome_from_batched(c, self.by_id.get(c.candidate_id))
        if self.per_candidate is None:
            return None, "the batched relaxation job failed (no output)"
        doc = self.per_candidate[c.index] if c.index < len(self.per_candidate) else None
        if doc is not None:
            return outcome_from_task_doc(c, doc)
        if not c.valid:
            return None, f"rejected before relaxation: {c.issue}"
        return None, (
            f"relaxation job {self.info(c).get('name', '?')!r} failed: it left no output in the "
            "job store (its log or FireWorks launch holds the traceback)"
        )


def collect(
    candidates: list[CandidateDoc], relaxations: Relaxations
) -> tuple[list[Outcome], list[FailedCandidate]]:
    """Sane relaxed outcomes, and every other candidate as a failure naming its stage."""
    outcomes, failed = [], []
    for c in candidates:
        out, why = relaxations.outcome(c)
        stage = "generation" if not c.valid else "relaxation"
        if out is not None and (why := sanity_issue(out.structure, out.energy_per_atom)):
            out, stage = None, "ranking"
        if out is None:
            info = relaxations.info(c)
            failed.append(
                FailedCandidate(
                    candidate_id=c.candidate_id, source=c.source, stage=stage,  # type: ignore[arg-type]
                    reason=why or "unknown", job_uuid=info.get("uuid"), job_name=info.get("name"),
                )
            )  # fmt: skip
        else:
            outcomes.append(out)
    return outcomes, failed


def deduplicate(
    outcomes: list[Outcome], matcher: StructureMatcher
) -> list[tuple[Outcome, list[str]]]:
    """Groups of matching structures, lowest energy first, each represented by its best
    member (with the candidate ids of the others)."""
    groups: list[tuple[Outcome, list[str]]] = []
    for o in sorted(outcomes, key=lambda o: o.energy_per_atom):
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
    return groups


def rank(
    groups: list[tuple[Outcome, list[str]]], scores: list[float | None], symprec: float
) -> list[RankedPolymorph]:
    """Ranked polymorphs: the plausible ones by energy, then the flagged ones, then those the
    potential failed on, so that rank 1 is a converged, trustworthy relaxation whenever there
    is one. Energies are measured from :func:`~dao_flows.plausibility.reference_energy`: the
    best converged polymorph, unless it lies absurdly far below the others."""
    reps = [rep for rep, _ in groups]
    e_min = reference_energy([r.energy_per_atom for r in reps], [r.converged for r in reps])
    any_converged = any(r.converged for r in reps)
    rows = []
    for (rep, dups), score in zip(groups, scores, strict=True):
        flagged = classify(rep.energy_per_atom - e_min, rep.converged, any_converged)
        kind, why = flagged or (None, None)
        rows.append((TIER[kind], rep.energy_per_atom, rep, dups, score, kind, why))
    rows.sort(key=lambda row: row[:2])
    polymorphs = []
    for position, (_, _, rep, dups, score, kind, why) in enumerate(rows, start=1):
        symbol, number = spacegroup(rep.structure, symprec)
        polymorphs.append(
            RankedPolymorph.from_structure(
                meta_structure=rep.structure,
                fields=STRUCTURE_FIELDS,
                rank=position,
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
                implausible=why,
                flag=kind,
                n_relax_steps=rep.n_steps,
                duplicates=dups,
            )
        )
    return polymorphs


def timings_of(
    generation: GenerationDoc, relaxations: Relaxations, outcomes: list[Outcome]
) -> dict[str, float]:
    timings = {f"generation_{k}": v for k, v in generation.timings.items()}
    timings["generation_s"] = round(sum(generation.timings.values()), 4)
    relax_times = [float(o.elapsed_s) for o in outcomes if o.elapsed_s is not None]
    if relaxations.batched is not None:
        timings["relax_s"] = float(relaxations.batched.elapsed_s)
    elif relax_times:
        timings["relax_s"] = round(sum(relax_times), 3)  # summed over jobs
        timings["relax_max_job_s"] = round(max(relax_times), 3)
    return timings


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
            from dao_core.csp import default_guidance

            self.score_model = default_guidance()

    @ranking_job
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
        relaxed = Relaxations.of(relaxations, relax_jobs)
        outcomes, failed = collect(generation.candidates, relaxed)
        groups = deduplicate(outcomes, StructureMatcher(**self.matcher))
        scores, score_error = self.scores([rep.structure for rep, _ in groups])
        polymorphs = rank(groups, scores, self.symprec)
        timings = timings_of(generation, relaxed, outcomes)
        timings["ranking_s"] = round(time.perf_counter() - started, 4)
        doc = CSPResultDoc(
            run_uuid=run_uuid,
            formula=generation.formula,
            reduced_formula=generation.reduced_formula,
            formula_units=generation.formula_units,
            n_atoms=generation.n_atoms,
            relax_mode=relax_mode,  # type: ignore[arg-type]
            polymorphs=polymorphs,
            failed=failed,
            n_candidates=len(generation.candidates),
            n_relaxed=len(outcomes),
            n_unique=len(polymorphs),
            provenance=self.provenance(generation, relaxed, relax_mode, relax_settings),
            timings=timings,
        )
        if score_error:
            doc.provenance["ranking"]["score_error"] = score_error
        return with_verification(doc, verify_top, dft_maker)

    def scores(self, structures: list[Structure]) -> tuple[list[float | None], str | None]:
        """DAO-P scores of the relaxed structures (informative: a failure is recorded)."""
        if not self.score_model or not structures:
            return [None] * len(structures), None
        try:
            from dao_core.csp import score_energy
            from dao_flows.generation import cached_model

            model = cached_model(self.score_model, self.device)
            raw = score_energy(structures, model=model, device=self.device)
            return [float(s) if np.isfinite(s) else None for s in raw], None
        except Exception as exc:  # noqa: BLE001 - scores are informative, not essential
            logger.warning("DAO-P scoring of relaxed structures failed: %s", exc)
            return [None] * len(structures), f"{type(exc).__name__}: {exc}"

    def provenance(
        self,
        generation: GenerationDoc,
        relaxed: Relaxations,
        relax_mode: str,
        relax_settings: dict[str, Any] | None,
    ) -> dict[str, Any]:
        relaxation: dict[str, Any] = {"mode": relax_mode, **(relax_settings or {})}
        if relaxed.batched is not None:
            relaxation["device"] = relaxed.batched.device
            relaxation["force_field_version"] = relaxed.batched.force_field_version
            relaxation["n_model_calls"] = relaxed.batched.n_model_calls
        return {
            "generation": {k: v for k, v in generation.provenance.items() if k != "versions"},
            "relaxation": relaxation,
            "ranking": {
                "symprec": self.symprec,
                "structure_matcher": self.matcher or "pymatgen defaults",
                "score_model": self.score_model,
            },
            "versions": generation.provenance.get("versions") or package_versions(),
        }
