"""ML relaxation of CSP candidates.

Two routes, both ending in the same ranking:

* per candidate: one atomate2 :class:`ForceFieldRelaxMaker` job per structure (CHGNet by
  default, SevenNet or any other atomate2 relax maker selectable), so a workflow manager such
  as FireWorks can spread them over workers;
* batched: :class:`BatchedRelaxMaker`, one job that relaxes every candidate at once with a
  vectorised FIRE on CHGNet's batched predictions (GPU when present), or with torch-sim's
  FIRE and autobatcher (``optimizer="torch-sim"``).

The batched optimiser (:mod:`dao_flows.batched_fire`) is the same algorithm as atomate2's route
(ASE FIRE on a FrechetCellFilter), with the potential evaluated for all candidates per call.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, Literal

from atomate2.forcefields.jobs import ForceFieldRelaxMaker, forcefield_job
from jobflow import Maker
from pymatgen.core import Structure

from dao_core.data import right_handed_structure
from dao_flows.batched_fire import (
    BatchRelaxResult,
    batched_fire_relax,
    load_chgnet,  # noqa: F401 - re-exported (tests import it)
)
from dao_flows.jobs import batched_relax_job
from dao_flows.schemas import BatchedRelaxDoc, CandidateDoc, GenerationDoc, RelaxedCandidate

logger = logging.getLogger(__name__)


@dataclass
class CandidateRelaxMaker(ForceFieldRelaxMaker):
    """atomate2's ForceFieldRelaxMaker that passes over rejected candidates.

    The CSP flow wires one relaxation per candidate slot before generation has run; a slot whose
    candidate was rejected (exploded cell, overlapping atoms, ...) arrives as ``None`` and
    yields no output instead of a crash. Left-handed cells are re-expressed right-handed first
    (CHGNet's stress changes sign with the cell's handedness). Anything else is atomate2's
    relaxation, unchanged.
    """

    name: str = "CHGNet relax"

    @forcefield_job
    def make(self, structure: Structure | None, prev_dir: str | None = None):  # type: ignore[override]
        if structure is None:
            return None
        structure = right_handed_structure(structure)
        return ForceFieldRelaxMaker.make.original(self, structure, prev_dir=prev_dir)


def default_relax_maker(
    force_field: str | None = None,
    fmax: float | None = None,
    steps: int | None = None,
    relax_cell: bool = True,
    device: str | None = None,
) -> ForceFieldRelaxMaker:
    """atomate2's force-field relaxation (FIRE + FrechetCellFilter) as used per candidate
    (:class:`CandidateRelaxMaker`: rejected candidates, passed as None, give no output);
    unset settings are :class:`BatchedRelaxMaker`'s, so both routes relax alike."""
    force_field = force_field or BatchedRelaxMaker.force_field_name
    fmax = BatchedRelaxMaker.fmax if fmax is None else fmax
    steps = BatchedRelaxMaker.steps if steps is None else steps
    calculator_kwargs: dict[str, Any] = {}
    if device:
        calculator_kwargs["use_device" if force_field.lower() == "chgnet" else "device"] = device
    return CandidateRelaxMaker(
        name=f"{force_field} relax",
        force_field_name=force_field,
        relax_cell=relax_cell,
        steps=steps,
        # No per-job extxyz file in the working directory (ASE appends to it otherwise).
        relax_kwargs={"fmax": fmax, "final_atoms_object_file": None},
        calculator_kwargs=calculator_kwargs,
    )


def _package_version(force_field_name: str) -> str | None:
    """Version of the force field's package (chgnet, sevenn)."""
    try:
        from importlib.metadata import version

        name = force_field_name.lower()
        return version("sevenn" if name == "sevennet" else name)
    except Exception:  # noqa: BLE001
        return None


@dataclass
class BatchedRelaxMaker(Maker):
    """Relax all candidates of a generation document in ONE job (batched CHGNet + FIRE).

    Numerically the same optimiser as the per-candidate atomate2 route (FIRE on a
    FrechetCellFilter), but every FIRE step evaluates all unconverged candidates in one batched
    CHGNet call, on the GPU when there is one. With ``optimizer="torch-sim"`` the force field
    may also be ``"SevenNet"`` (``calculator_kwargs={"model": ...}``, default 7net-l3i5).
    """

    name: str = "dao batched relax"
    force_field_name: str = "CHGNet"
    fmax: float = 0.05
    steps: int = 300  # FIRE steps; candidates not converged by then are flagged, not lost
    relax_cell: bool = True
    device: str | None = None
    batch_size: int = 64
    fire: dict[str, float] = field(default_factory=dict)
    # "fire": dao_flows.batched_fire; "torch-sim": torch-sim's FIRE (the `torchsim` extra).
    # FIRE is the default: it matches atomate2's route more closely and is 1.8x faster on the
    # CPU (docs/performance.md).
    optimizer: Literal["fire", "torch-sim"] = "fire"
    calculator_kwargs: dict[str, Any] = field(default_factory=dict)  # e.g. SevenNet's model

    def check_force_field(self) -> None:
        """DAOInputError unless this optimiser can run the force field (the flow asks before
        creating jobs; the Maker also holds the per-candidate route's settings, so any force
        field may sit here when that route runs)."""
        from dao_core.errors import DAOInputError

        supported = ("CHGNet", "SevenNet") if self.optimizer == "torch-sim" else ("CHGNet",)
        if self.force_field_name.lower() not in {name.lower() for name in supported}:
            raise DAOInputError(
                f"batched relaxation with optimizer {self.optimizer!r} supports "
                f"{' and '.join(supported)}, not {self.force_field_name!r}; use the "
                "per-candidate route for other force fields"
            )

    @batched_relax_job
    def make(self, generation: GenerationDoc | list[CandidateDoc]) -> BatchedRelaxDoc:
        self.check_force_field()
        candidates = generation.candidates if isinstance(generation, GenerationDoc) else generation
        todo = [c for c in candidates if c.valid and c.structure is not None]
        relaxed, stats = self._relax([c.structure for c in todo])
        by_id = {c.candidate_id: r for c, r in zip(todo, relaxed, strict=True)}
        out: list[RelaxedCandidate] = []
        for c in candidates:
            r = by_id.get(c.candidate_id)
            if r is None:
                out.append(
                    RelaxedCandidate(
                        candidate_id=c.candidate_id,
                        index=c.index,
                        source=c.source,
                        status="skipped",
                        reason=f"rejected before relaxation: {c.issue}",
                    )
                )
                continue
            ok = r.error is None
            out.append(
                RelaxedCandidate(
                    candidate_id=c.candidate_id,
                    index=c.index,
                    source=c.source,
                    status="relaxed" if ok else "failed",
                    structure=r.structure,
                    energy=r.energy_per_atom * len(r.structure) if ok else None,
                    energy_per_atom=r.energy_per_atom,
                    converged=r.converged,
                    n_steps=r.n_steps,
                    max_force=r.max_force,
                    reason=r.error,
                    energies=r.energies,
                )
            )
        return BatchedRelaxDoc(
            results=out,
            force_field=self.force_field_name,
            force_field_version=_package_version(self.force_field_name),
            fmax=self.fmax,
            steps=self.steps,
            device=stats.get("device", "cpu"),
            relax_cell=self.relax_cell,
            # "fire": FIRE iterations (rounds evaluating every active candidate); "torch-sim":
            # the adapter's batched forward calls. Not CHGNet passes: the name is historical.
            n_model_calls=stats.get("model_calls") or 0,
            elapsed_s=round(stats.get("elapsed_s", 0.0), 3),
        )

    def _relax(self, structures: list[Structure]) -> tuple[list[BatchRelaxResult], dict]:
        common = dict(fmax=self.fmax, steps=self.steps, relax_cell=self.relax_cell,
                      device=self.device)  # fmt: skip
        if self.optimizer == "torch-sim":
            from dao_flows.torchsim_relax import torchsim_model, torchsim_relax

            model = torchsim_model(self.force_field_name, self.device, **self.calculator_kwargs)
            return torchsim_relax(structures, **common, model=model)
        if self.optimizer != "fire":
            raise ValueError(f"optimizer {self.optimizer!r}: expected 'fire' or 'torch-sim'")
        return batched_fire_relax(
            structures, **common, batch_size=self.batch_size, fire=self.fire or None
        )
