"""Re-rank the best polymorphs with a second, more accurate potential.

Measured on the end-to-end benchmark (docs/benchmarks.md, "Re-ranking"): when CHGNet's rank 1
misses the real structure, the real one is usually among its top five, a few meV/atom higher;
SevenNet-l3i5 (weights in the sevenn wheel), relaxing CHGNet's top five again, put it first in
8 of 15 such held-out compositions and kept 24 of 25 hits. This job does that for any run: the top
``top`` polymorphs are relaxed again (FIRE on a Fréchet cell filter, atomate2's ASE route)
and ordered by the second potential's energy; the rest keep CHGNet's order below them.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from jobflow import Maker, Response

from dao_flows.generation import check_structure
from dao_flows.jobs import ranking_job
from dao_flows.schemas import CSPResultDoc
from dao_flows.verification import with_verification

logger = logging.getLogger(__name__)

if TYPE_CHECKING:
    from ase.calculators.calculator import Calculator
    from pymatgen.core import Structure


def relax_structure(
    structure: Structure, calc: Calculator, fmax: float, steps: int
) -> tuple[Structure, float]:
    """Relax positions and cell (ASE FIRE on a FrechetCellFilter, as atomate2's relaxer does);
    the relaxed structure and its energy per atom, read from the calculator's last step."""
    import warnings

    from ase.filters import FrechetCellFilter
    from ase.optimize import FIRE
    from pymatgen.io.ase import AseAtomsAdaptor

    atoms = AseAtomsAdaptor.get_atoms(structure)
    atoms.calc = calc
    with warnings.catch_warnings():  # the potentials' own warnings, once per structure
        warnings.simplefilter("ignore")
        FIRE(FrechetCellFilter(atoms), logfile=None).run(fmax=fmax, steps=steps)
    return AseAtomsAdaptor.get_structure(atoms), float(atoms.get_potential_energy()) / len(atoms)


@dataclass
class RefineMaker(Maker):
    """Relax the ``top`` best polymorphs of a :class:`CSPResultDoc` with ``force_field_name``
    (an atomate2 MLFF name; ``calculator_kwargs`` pick its model) and re-rank them by its
    energy. ``top = 0`` returns the result unchanged.

    On by default (top 5): CHGNet, which relaxes and ranks the whole pool, is what limits the
    end-to-end success (most misses have the real structure in the top 5); SevenNet-l3i5 on
    the top 5 turned 6/14 into 10/14 on unselected held-out compositions (docs/benchmarks.md).
    """

    name: str = "dao refine"
    top: int = 5
    force_field_name: str = "SevenNet"
    calculator_kwargs: dict[str, Any] = field(default_factory=lambda: {"model": "7net-l3i5"})
    fmax: float = 0.05
    steps: int = 300
    device: str | None = None

    @ranking_job
    def make(
        self, result: CSPResultDoc, verify_top: int = 0, dft_maker: Maker | None = None
    ) -> Response:
        """The re-ranked result; ``verify_top`` > 0 adds ``dft_maker`` checks of the new best
        (the flow hands DFT verification to this job when it runs)."""
        if isinstance(result, dict):
            result = CSPResultDoc.model_validate(result)
        if self.top > 0 and result.polymorphs:
            result = self.rerank(result)
        return with_verification(result, verify_top, dft_maker)

    def rerank(self, result: CSPResultDoc) -> CSPResultDoc:
        """Relax the top polymorphs again and order them by the new energy. A polymorph the
        potential cannot relax keeps its place below the refined ones, with the reason in the
        provenance; a potential that cannot be loaded leaves the ranking as it was."""
        started = time.perf_counter()
        refined_by: dict[str, Any] = dict(
            force_field_name=self.force_field_name, top=self.top, fmax=self.fmax,
            steps=self.steps, **self.calculator_kwargs,
        )  # fmt: skip
        try:
            from atomate2.forcefields.utils import ase_calculator

            device = {"device": self.device} if self.device else {}
            calc = ase_calculator(self.force_field_name, **self.calculator_kwargs, **device)
        except Exception as exc:  # noqa: BLE001 - e.g. the potential's package is missing
            logger.warning(
                "re-ranking skipped: %s could not be loaded (%s)", self.force_field_name, exc
            )
            refined_by["error"] = f"{type(exc).__name__}: {exc}"
            return result.model_copy(
                update={"provenance": {**result.provenance, "refined_by": refined_by}}
            )
        refined, errors = [], {}
        for polymorph in result.polymorphs[: self.top]:
            energy, error = self._energy(polymorph.structure, calc)
            if error:
                errors[polymorph.candidate_id] = error
            refined.append((energy is None, polymorph.implausible is not None, energy, polymorph))
        # relaxed first, plausible first, then by the new energy; failures keep CHGNet's order
        refined.sort(key=lambda row: (row[0], row[1], row[2] if row[2] is not None else 0.0))
        best = min((e for *_, e, _ in refined if e is not None), default=None)
        reordered = [
            p.model_copy(update={
                "refined_energy_per_atom": e,
                "refined_e_above_min_meV": None if e is None else round(1000 * (e - best), 1),
            })
            for *_, e, p in refined
        ] + result.polymorphs[self.top :]  # fmt: skip
        polymorphs = [p.model_copy(update={"rank": i}) for i, p in enumerate(reordered, 1)]
        if errors:
            refined_by["errors"] = errors
        timings = {**result.timings, "refine_s": round(time.perf_counter() - started, 2)}
        provenance = {**result.provenance, "refined_by": refined_by}
        return result.model_copy(
            update={"polymorphs": polymorphs, "timings": timings, "provenance": provenance}
        )

    def _energy(self, structure: Structure, calc: Calculator) -> tuple[float | None, str | None]:
        """(energy per atom after relaxation, None), or (None, why not)."""
        issue = check_structure(structure)[0]  # e.g. NaN sites, which a potential may skip
        if issue:
            return None, issue
        try:
            relaxed, energy = relax_structure(structure, calc, self.fmax, self.steps)
        except Exception as exc:  # noqa: BLE001 - one polymorph must not stop the others
            return None, f"{type(exc).__name__}: {exc}"
        if not math.isfinite(energy):
            return None, "non-finite energy"
        issue = check_structure(relaxed)[0]  # a collapsed or exploded cell is no ranking
        return (None, f"relaxed cell: {issue}") if issue else (energy, None)
