"""DFT verification of ranked polymorphs: one job of any atomate2-style DFT Maker per structure
(``dao_flows.qe.PWMaker`` for Quantum ESPRESSO, or e.g. atomate2's VASP makers)."""

from __future__ import annotations

from collections.abc import Sequence

from jobflow import Flow, Maker
from pymatgen.core import Structure

from dao_flows.schemas import RankedPolymorph


def verification_flow(
    items: Sequence[RankedPolymorph | Structure], maker: Maker, label: str = ""
) -> Flow:
    """``maker.make(structure)`` for each item; the output is the list of their documents.

    Jobs are named after the polymorph's rank and candidate id (or the structure's position),
    so they can be found in the store. A failed calculation does not stop the others.
    """
    jobs = []
    for i, item in enumerate(items):
        structure = item.structure if isinstance(item, RankedPolymorph) else item
        dft = maker.make(structure)
        if isinstance(item, RankedPolymorph):
            dft.name = f"verify rank-{item.rank} {item.candidate_id}"
        else:
            dft.name = f"{maker.name} {i} {structure.composition.reduced_formula}"
        jobs.append(dft)
    name = f"dao verify top-{len(jobs)} {label}".strip()
    return Flow(jobs, output=[j.output for j in jobs], name=name)
