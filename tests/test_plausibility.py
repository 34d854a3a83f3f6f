"""Plausibility flags of ranked polymorphs: the reference energy survives a collapsed cell that
converged, one place decides each flag's kind (stored, then only translated by the terminal
table), documents written before the kind was stored still load, and a re-ranking whose
ranking failed says so.

Real pymatgen structures (rocksalt NaCl of different lattice constants) with made-up energies:
ranking only reads the energies and relaxation status.
"""

from __future__ import annotations

from typing import get_args

import pytest
from csp_inputs import rocksalt

from dao_flows.plausibility import Flag, reference_energy
from dao_flows.ranking import Outcome, rank
from dao_flows.refine import RefineMaker
from dao_flows.report import status_word
from dao_flows.schemas import CandidateDoc, CSPResultDoc, RankedPolymorph


def outcome(name: str, a: float, energy: float, converged: bool) -> Outcome:
    c = CandidateDoc(candidate_id=name, index=0, source="pyxtal", structure=rocksalt(a))
    return Outcome(c, rocksalt(a), energy, converged, 300, None)


def ranked(*outcomes: Outcome) -> list[RankedPolymorph]:
    return rank([(o, []) for o in outcomes], [None] * len(outcomes), symprec=0.1)


def test_a_converged_collapse_is_not_the_reference():
    """CHGNet converging a broken cell to -87 eV/atom must not rank first unflagged nor make
    the real polymorphs "83.6 eV/atom above the best"."""
    polymorphs = ranked(
        outcome("pyxtal-000", 9.0, -87.0, True),
        outcome("pyxtal-001", 5.64, -3.40, True),
        outcome("pyxtal-002", 5.9, -3.38, True),
    )
    assert [p.candidate_id for p in polymorphs] == ["pyxtal-001", "pyxtal-002", "pyxtal-000"]
    best, second, broken = polymorphs
    assert [p.rank for p in polymorphs] == [1, 2, 3]
    assert best.flag is None and best.implausible is None and best.e_above_min_meV == 0.0
    assert second.flag is None and second.e_above_min_meV == pytest.approx(20.0)
    assert broken.flag == "potential_failed"
    assert broken.implausible.startswith("83.60 eV/atom below the other converged polymorphs")
    assert broken.e_above_min_meV == pytest.approx(-83600.0)
    assert [status_word(p) for p in polymorphs] == ["ok", "ok", "failed"]


def test_nothing_converged_the_collapse_is_still_last():
    """Without any converged relaxation, the collapsed cell is flagged as a failure and ranked
    last; the others are measured from the best of the rest."""
    polymorphs = ranked(
        outcome("pyxtal-000", 9.0, -87.0, False),
        outcome("pyxtal-001", 5.64, -3.40, False),
        outcome("pyxtal-002", 5.9, -3.38, False),
    )
    assert [p.candidate_id for p in polymorphs] == ["pyxtal-001", "pyxtal-002", "pyxtal-000"]
    assert [p.flag for p in polymorphs] == ["unconverged", "unconverged", "potential_failed"]
    assert "below the other relaxed polymorphs" in polymorphs[2].implausible
    assert [p.e_above_min_meV for p in polymorphs] == pytest.approx([0.0, 20.0, -83600.0])


def test_reference_energy():
    """The lowest converged energy near the median; energies just below it join it."""
    assert reference_energy([-87.0, -3.40, -3.38], [True] * 3) == -3.40
    assert reference_energy([-87.0, -3.40], [True, True]) == -3.40
    # an unconverged energy is never the reference while a converged one exists
    assert reference_energy([-3.9, -3.40], [False, True]) == -3.40
    # a trapped majority (1.5 eV/atom up) keeps the real ground state as reference
    assert reference_energy([-5.0, -3.5, -3.5, -3.5], [True] * 4) == -5.0
    # -5.3 is past the median's 2 eV/atom margin, but 0.4 eV/atom below -4.9: a landscape
    assert reference_energy([-5.3, -4.9, -3.0, -3.0, -3.0], [True] * 5) == -5.3
    assert reference_energy([-5.6, -4.9, -3.0, -3.0, -3.0], [True] * 5) == -4.9
    assert reference_energy([], []) == 0.0


@pytest.mark.parametrize(
    "energy, converged, kind, word",
    [
        (-3.40 + 0.5000004, True, "high_energy", "high E"),  # stored as +500.0 meV/atom
        (-3.40 - 0.5000004, False, "potential_failed", "failed"),  # stored as -500.0 meV/atom
        (-3.40 + 0.4999996, False, "unconverged", "unconv."),
        (-3.40 + 0.4999996, True, None, "ok"),
    ],
)
def test_stored_kind_and_terminal_word_agree_at_the_boundary(energy, converged, kind, word):
    """Half a µeV past the thresholds the rounded e_above_min_meV is exactly ±500: guessing
    from it said "unconv." for both flagged cells; the stored kind decides the word."""
    polymorphs = ranked(
        outcome("pyxtal-000", 5.64, -3.40, True), outcome("x", 5.9, energy, converged)
    )
    p = next(p for p in polymorphs if p.candidate_id == "x")
    assert abs(p.e_above_min_meV) == pytest.approx(500.0, abs=1e-3)
    assert p.flag == kind and (p.implausible is None) == (kind is None)
    assert status_word(p) == word


def test_flag_kinds_match_the_schema():
    """plausibility.Flag and RankedPolymorph.flag name the same kinds."""
    annotation = RankedPolymorph.model_fields["flag"].annotation
    assert set(get_args(get_args(annotation)[0])) == set(get_args(Flag))


def test_an_old_document_without_flag_loads():
    """Documents stored before ``flag`` existed validate (flag None); the terminal word then
    falls back to the energy."""
    polymorphs = ranked(outcome("pyxtal-000", 5.64, -3.40, True), outcome("x", 9.0, -2.0, True))
    old = [p.model_dump() for p in polymorphs]
    for d in old:
        del d["flag"]
    doc = CSPResultDoc.model_validate(
        {"run_uuid": "run-0", "formula": "Na4Cl4", "reduced_formula": "NaCl", "n_atoms": 8,
         "relax_mode": "batched", "polymorphs": old, "n_candidates": 2, "n_relaxed": 2,
         "n_unique": 2}
    )  # fmt: skip
    best, high = doc.polymorphs
    assert best.flag is None and high.flag is None
    assert high.implausible == "1.40 eV/atom above the best (> 0.5)"
    assert [status_word(p) for p in doc.polymorphs] == ["ok", "high E"]


def test_refine_without_a_ranking_says_why():
    """The re-ranking job runs with None when the ranking job failed (OnMissing.NONE)."""
    maker = RefineMaker()
    with pytest.raises(RuntimeError, match="the ranking job produced no output"):
        maker.make.original(maker, None)
