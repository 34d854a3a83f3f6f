"""Output documents of the DAO workflow jobs (pydantic, in the atomate2/emmet style).

Every document carries a ``doc_type`` so that the job store can be queried without knowing
which job produced it, and enough provenance (model names + weight hashes, seeds, sampling
steps, guidance, package versions) to reproduce a run.
"""

from __future__ import annotations

import platform
from datetime import datetime, timezone
from importlib import metadata
from typing import Any, Literal

from emmet.core.structure import StructureMetadata
from pydantic import BaseModel, Field
from pymatgen.core import Structure

from dao_flows.plausibility import Flag

Source = Literal["dao-g", "pyxtal", "template", "user"]

# Packages whose versions go into every provenance block.
_VERSIONED = (
    "dao-csp",
    "torch",
    "numpy",
    "pymatgen",
    "spglib",
    "jobflow",
    "atomate2",
    "maggma",
    "chgnet",
    "pyxtal",
    "ase",
)


def package_versions() -> dict[str, str]:
    """Installed versions of the packages that determine a DAO workflow's result."""
    versions: dict[str, str] = {"python": platform.python_version()}
    for name in _VERSIONED:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "not installed"
    try:  # the in-tree version wins over dist metadata when running from a checkout
        import dao_core

        versions["dao_core"] = getattr(dao_core, "__version__", "unknown")
    except ImportError:  # pragma: no cover - dao_core is a hard dependency
        versions["dao_core"] = "not importable"
    return versions


def utcnow() -> str:
    return datetime.now(tz=timezone.utc).isoformat(timespec="seconds")


class CandidateDoc(BaseModel):
    """One candidate structure produced by the generation stage."""

    candidate_id: str = Field(description="stable id within the run, e.g. 'dao-g-003'")
    index: int = Field(description="position in the generation document's candidate list")
    source: Source = Field(description="who proposed it: DAO-G sampling or pyxtal random")
    structure: Structure | None = Field(
        None, description="structure handed to relaxation; None when rejected before it"
    )
    raw_structure: Structure | None = Field(
        None, description="structure exactly as generated (kept for rejected candidates too)"
    )
    valid: bool = Field(True, description="passed the pre-relaxation sanity checks")
    issue: str | None = Field(None, description="why the candidate was rejected, if it was")
    min_distance: float | None = Field(None, description="shortest interatomic distance, Å")
    volume_per_atom: float | None = Field(None, description="Å^3 per atom")
    dao_p_score: float | None = Field(None, description="DAO-P energy score of the raw candidate")
    metadata: dict[str, Any] = Field(default_factory=dict, description="e.g. pyxtal space group")


class GenerationDoc(BaseModel):
    """Output of :class:`~dao_flows.generation.DAOGenerationMaker`."""

    doc_type: Literal["dao_generation"] = "dao_generation"
    formula: str
    reduced_formula: str
    formula_units: int | None = None
    n_atoms: int
    n_dao_g: int
    n_random: int
    candidates: list[CandidateDoc]
    provenance: dict[str, Any] = Field(default_factory=dict)
    timings: dict[str, float] = Field(default_factory=dict, description="seconds per sub-stage")
    created_at: str = Field(default_factory=utcnow)


class RelaxedCandidate(BaseModel):
    """Result of relaxing one candidate inside the batched relaxation job."""

    candidate_id: str
    index: int
    source: Source
    status: Literal["relaxed", "failed", "skipped"]
    structure: Structure | None = None
    energy: float | None = Field(None, description="total energy, eV")
    energy_per_atom: float | None = Field(None, description="eV/atom")
    converged: bool = False
    n_steps: int = 0
    max_force: float | None = Field(None, description="final max generalised force, eV/Å")
    reason: str | None = None
    energies: list[float] = Field(
        default_factory=list, description="eV/atom at every step (kept in the 'data' store)"
    )


class BatchedRelaxDoc(BaseModel):
    """Output of :class:`~dao_flows.relax.BatchedRelaxMaker`: all candidates relaxed at once."""

    doc_type: Literal["dao_batched_relax"] = "dao_batched_relax"
    results: list[RelaxedCandidate]
    force_field: str = "CHGNet"
    force_field_version: str | None = None
    fmax: float
    steps: int
    device: str
    relax_cell: bool = True
    n_model_calls: int = Field(
        0,
        description="optimiser iterations (fire: one batched CHGNet pass per chunk of active "
        "structures each; torch-sim: its batched model calls)",
    )
    elapsed_s: float = 0.0
    created_at: str = Field(default_factory=utcnow)


# emmet's structure fields a polymorph carries (its space group comes from the ranking's own
# symprec, so emmet's ``symmetry`` is left out rather than computed twice).
STRUCTURE_FIELDS = ["nsites", "elements", "nelements", "composition", "composition_reduced",
                    "formula_pretty", "formula_anonymous", "chemsys", "volume", "density",
                    "density_atomic"]  # fmt: skip


class RankedPolymorph(StructureMetadata):
    """One unique relaxed structure in the final ranking, with emmet's structure metadata
    (formula, chemical system, density, ...: query the store as you would Materials Project
    documents). Build it with ``RankedPolymorph.from_structure(meta_structure=s,
    fields=STRUCTURE_FIELDS, structure=s, ...)``."""

    rank: int = Field(
        description="position in the ranking, from 1: plausible polymorphs first, then flagged "
        "ones, then those the potential failed on, each tier by ML energy per atom; the top "
        "``RefineMaker.top`` are re-ordered by the re-ranking potential's energy when it ran"
    )
    candidate_id: str
    source: Source
    structure: Structure
    formula: str
    energy_per_atom: float = Field(description="relaxed ML energy, eV/atom")
    e_above_min_meV: float = Field(
        description="ML energy above the best converged, plausible polymorph (of all, when none "
        "converged), meV/atom; negative for unconverged cells a little below it and for cells "
        "on which the potential failed"
    )
    spacegroup_symbol: str
    spacegroup_number: int
    dao_p_score: float | None = Field(None, description="DAO-P energy score of the relaxed one")
    relax_status: Literal["converged", "not converged"]
    implausible: str | None = Field(
        None, description="why this polymorph is not a plausible structure (None: no reason)"
    )
    flag: Flag | None = Field(
        None,
        description="kind of ``implausible``: 'unconverged' "
        "(relaxation hit its step limit), 'high_energy' (far above the best), "
        "'potential_failed' (far below it: the potential left its training domain); None when "
        "plausible, or in documents written before this field",
    )
    n_relax_steps: int | None = None
    refined_energy_per_atom: float | None = Field(
        None, description="energy after relaxing again with the refining potential (eV/atom)"
    )
    refined_e_above_min_meV: float | None = Field(
        None, description="refined energy above the best refined polymorph, meV/atom"
    )
    duplicates: list[str] = Field(
        default_factory=list, description="candidate ids that relaxed into the same structure"
    )


class FailedCandidate(BaseModel):
    """A candidate that did not make it into the ranking, and why."""

    candidate_id: str
    source: Source
    stage: Literal["generation", "relaxation", "ranking"]
    reason: str
    job_uuid: str | None = None
    job_name: str | None = None


class CSPResultDoc(BaseModel):
    """The one result document of a DAO crystal-structure-prediction run."""

    doc_type: Literal["dao_csp_result"] = "dao_csp_result"
    run_uuid: str = Field(description="uuid of the CSP flow; re-running it upserts this doc")
    formula: str
    reduced_formula: str
    formula_units: int | None = None
    n_atoms: int
    relax_mode: Literal["per-candidate", "batched"]
    polymorphs: list[RankedPolymorph]
    failed: list[FailedCandidate] = Field(default_factory=list)
    n_candidates: int
    n_relaxed: int
    n_unique: int
    provenance: dict[str, Any] = Field(default_factory=dict)
    timings: dict[str, float] = Field(default_factory=dict, description="seconds per stage")
    verify_jobs: list[str] = Field(
        default_factory=list, description="uuids of DFT verification jobs on the top-k"
    )
    created_at: str = Field(default_factory=utcnow)

    @property
    def best(self) -> RankedPolymorph | None:
        return self.polymorphs[0] if self.polymorphs else None

    @property
    def relaxed_by(self) -> str:
        """The force field that relaxed and ranked the pool (as recorded; CHGNet by default)."""
        return self.provenance.get("relaxation", {}).get("force_field_name", "CHGNet")

    @property
    def reranked_by(self) -> str | None:
        """The potential that re-ranked the top polymorphs (e.g. "7net-l3i5"), or None where
        none did (not asked, or it could not be loaded)."""
        refined = self.provenance.get("refined_by")
        if not refined or not any(p.refined_energy_per_atom is not None for p in self.polymorphs):
            return None
        return refined.get("model", refined["force_field_name"])
