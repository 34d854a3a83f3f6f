"""Re-rank the best polymorphs with a second, more accurate potential.

Measured on the end-to-end benchmark (docs/benchmarks.md, "Re-ranking"): when CHGNet's rank 1
misses the real structure, the real one is usually among its top five, a few meV/atom higher;
SevenNet-l3i5 (weights in the sevenn wheel), relaxing CHGNet's top five again, put it first in
8 of 15 such held-out compositions and kept 24 of 25 hits (sets chosen where re-ranking can
act); on 20 unselected held-out compositions it took rank-1 hits from 7 to 11. This job does
that for any run: the top ``top`` polymorphs are relaxed again (FIRE on a Fréchet cell filter:
atomate2's ASE route, or one torch-sim batch) and ordered by the second potential's energy; the
rest keep CHGNet's order below them.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from jobflow import Maker, Response

from dao_flows.batched_fire import SEVENNET_MODEL
from dao_flows.generation import check_structure
from dao_flows.jobs import ranking_job
from dao_flows.plausibility import TIER
from dao_flows.schemas import CSPResultDoc, RankedPolymorph
from dao_flows.verification import with_verification

logger = logging.getLogger(__name__)

if TYPE_CHECKING:
    from collections.abc import Callable

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


def _tier(polymorph: RankedPolymorph) -> int:
    """The polymorph's ranking tier (plausibility.TIER); documents stored before ``flag``
    existed carry only ``implausible``: flagged, not known to be a potential failure."""
    if polymorph.flag is None and polymorph.implausible is not None:
        return 1
    return TIER[polymorph.flag]


@dataclass
class RefineMaker(Maker):
    """Relax the ``top`` best polymorphs of a :class:`CSPResultDoc` with ``force_field_name``
    (an atomate2 MLFF name; ``calculator_kwargs`` pick its model) and re-rank them by its
    energy. ``top = 0`` returns the result unchanged.

    On by default (top 5): CHGNet, which relaxes and ranks the whole pool, is what limits the
    end-to-end success (most misses have the real structure in the top 5); SevenNet-l3i5 on
    the top 5 took rank-1 hits from 7 to 11 of 20 unselected held-out compositions
    (docs/benchmarks.md, "Re-ranking").
    """

    name: str = "dao refine"
    top: int = 5
    force_field_name: str = "SevenNet"
    calculator_kwargs: dict[str, Any] = field(default_factory=lambda: {"model": SEVENNET_MODEL})
    fmax: float = 0.05
    steps: int = 300
    device: str | None = None
    # "ase": atomate2's relaxer, one polymorph at a time; "torch-sim" (the `torchsim` extra):
    # all of them in one batch, SevenNet's neighbour lists on the device (the route for a GPU;
    # the same energies within 1 meV/atom on the CPU, docs/performance.md).
    optimizer: Literal["ase", "torch-sim"] = "ase"

    @ranking_job
    def make(
        self, result: CSPResultDoc | None, verify_top: int = 0, dft_maker: Maker | None = None
    ) -> Response:
        """The re-ranked result; ``verify_top`` > 0 adds ``dft_maker`` checks of the new best
        (the flow hands DFT verification to this job when it runs)."""
        if result is None:  # the ranking job failed: it arrives as None (OnMissing.NONE)
            raise RuntimeError("the ranking job produced no output; nothing to re-rank")
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
            steps=self.steps, optimizer=self.optimizer, **self.calculator_kwargs,
        )  # fmt: skip
        try:
            relax = self._relaxer()
        except Exception as exc:  # noqa: BLE001 - e.g. the potential's package is missing
            logger.warning(
                "re-ranking skipped: %s could not be loaded (%s)", self.force_field_name, exc
            )
            refined_by["error"] = f"{type(exc).__name__}: {exc}"
            return result.model_copy(
                update={"provenance": {**result.provenance, "refined_by": refined_by}}
            )
        refined, errors = [], {}
        top = result.polymorphs[: self.top]
        for polymorph, (energy, error) in zip(top, self._energies(top, relax), strict=True):
            if error:
                errors[polymorph.candidate_id] = error
            refined.append((energy is None, _tier(polymorph), energy, polymorph))
        # relaxed first, then the ranking's tiers (a potential failure never above a merely
        # unconverged cell), then the new energy; failures keep CHGNet's order
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

    def _relaxer(self) -> Callable[[list[Structure]], list[tuple[Structure, float] | str]]:
        """The potential, loaded: a function relaxing structures, each to (relaxed,
        energy/atom) or to the reason it could not be relaxed."""
        if self.optimizer == "torch-sim":
            from dao_flows.torchsim_relax import torchsim_model, torchsim_relax

            model = torchsim_model(self.force_field_name, self.device, **self.calculator_kwargs)

            def batch(structures: list[Structure]) -> list:
                try:
                    results, _ = torchsim_relax(
                        structures,
                        fmax=self.fmax,
                        steps=self.steps,
                        device=self.device,
                        model=model,
                    )
                except Exception as exc:  # noqa: BLE001 - e.g. out of memory: keep the order
                    return [f"torch-sim batch: {type(exc).__name__}: {exc}"] * len(structures)
                return [r.error or (r.structure, r.energy_per_atom) for r in results]

            return batch
        from atomate2.forcefields.utils import ase_calculator

        device = {"device": self.device} if self.device else {}
        calc = ase_calculator(self.force_field_name, **self.calculator_kwargs, **device)

        def one_by_one(structures: list[Structure]) -> list:
            out: list = []
            for structure in structures:
                try:
                    out.append(relax_structure(structure, calc, self.fmax, self.steps))
                except Exception as exc:  # noqa: BLE001 - one must not stop the others
                    out.append(f"{type(exc).__name__}: {exc}")
            return out

        return one_by_one

    def _energies(
        self, polymorphs: list, relax: Callable[[list[Structure]], list]
    ) -> list[tuple[float | None, str | None]]:
        """(energy per atom after relaxation, None), or (None, why not), per polymorph."""
        # e.g. NaN sites, which a potential may skip
        issues = [check_structure(p.structure)[0] for p in polymorphs]
        sound = [p.structure for p, issue in zip(polymorphs, issues, strict=True) if not issue]
        relaxed = iter(relax(sound))
        out: list[tuple[float | None, str | None]] = []
        for issue in issues:
            outcome = issue or next(relaxed)
            if isinstance(outcome, str):
                out.append((None, outcome))
                continue
            structure, energy = outcome
            if not math.isfinite(energy):
                out.append((None, "non-finite energy"))
                continue
            issue = check_structure(structure)[0]  # a collapsed or exploded cell is no ranking
            out.append((None, f"relaxed cell: {issue}") if issue else (energy, None))
        return out
