"""DFT verification of ranked polymorphs: one job of any atomate2-style DFT Maker per structure
(``dao_flows.qe.PWMaker`` for Quantum ESPRESSO, or e.g. atomate2's VASP makers)."""

from __future__ import annotations

from collections.abc import Sequence

from jobflow import Flow, Maker, Response
from pymatgen.core import Structure

from dao_flows.schemas import CSPResultDoc, RankedPolymorph


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


def with_verification(doc: CSPResultDoc, verify_top: int, dft_maker: Maker | None) -> Response:
    """The job response for a ranking: ``doc``, and with ``verify_top`` > 0 a DFT check of its
    best polymorphs added to the flow (their job ids recorded in ``doc.verify_jobs``)."""
    if verify_top <= 0 or dft_maker is None or not doc.polymorphs:
        return Response(output=doc)
    addition = verification_flow(doc.polymorphs[:verify_top], dft_maker, doc.formula)
    doc.verify_jobs = [j.uuid for j in addition.jobs]
    return Response(output=doc, addition=addition)
