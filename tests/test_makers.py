"""DAO CSP makers one at a time: input validation before any job, generation provenance,
batched relaxation against atomate2's, ranking and de-duplication (whole flows: test_flows.py).

Real components throughout: DAO-G/DAO-P checkpoints (tiny, untrained), pyxtal candidates,
CHGNet relaxations (few steps), the embedded MontyDB store in a temporary folder.
"""

from __future__ import annotations

import numpy as np
import pytest
from csp_inputs import rocksalt
from pymatgen.core import Lattice, Structure

from dao_core.errors import DAOInputError
from dao_flows.flows import dao_csp_batch_flow, dao_csp_flow
from dao_flows.generation import DAOGenerationMaker, check_structure
from dao_flows.ranking import RankingMaker, sanity_issue
from dao_flows.relax import (
    BatchedRelaxMaker,
    batched_fire_relax,
    default_relax_maker,
    load_chgnet,
)
from dao_flows.schemas import CandidateDoc, CSPResultDoc, GenerationDoc
from dao_flows.testing import nan_structure


@pytest.fixture(scope="module")
def chgnet():
    return load_chgnet("cpu")


# --------------------------------------------------------------------------- input validation


@pytest.mark.parametrize(
    "formula, options, message",
    [
        ("Na-Cl!!", {}, "formula"),
        ("XqO2", {}, "formula"),  # unknown element
        ("Xx2O", {}, "element"),  # dummy species
        ("C120", {}, "atoms"),  # > 100 atoms
        ("NaCl", {"formula_units": 60}, "atoms"),
        ("NaCl", {"n": 0}, "at least 1"),
        ("NaCl", {"n_random": -1}, ">= 0"),
        ("NaCl", {"n_template": -1}, "template candidates must be >= 0"),
        ("NaCl", {"force_field": "MACE"}, "supports CHGNet, not 'MACE'"),
        ("", {}, "formula"),
    ],
)
def test_invalid_input_raises_before_any_job(formula, options, message, dao_env, monkeypatch):
    built = []
    monkeypatch.setattr(DAOGenerationMaker, "make", lambda *a, **k: built.append(a))
    with pytest.raises(DAOInputError, match=message):
        dao_csp_flow(formula, **options)
    assert built == []  # validation happened before the first job was created


def test_batch_flow_validates_every_formula_first(dao_env):
    with pytest.raises(DAOInputError, match="Qq"):
        dao_csp_batch_flow(["NaCl", "QqO"], n=1)
    with pytest.raises(DAOInputError):
        dao_csp_batch_flow([])


def test_check_structure_flags_overlap_nan_and_collapse():
    ok = rocksalt()
    assert check_structure(ok)[0] is None
    overlap = Structure(Lattice.cubic(4), ["Na", "Cl"], [[0, 0, 0], [0.02, 0, 0]])
    assert "overlapping atoms" in check_structure(overlap)[0]
    assert "non-finite" in check_structure(nan_structure())[0]
    collapsed = Structure(Lattice.cubic(1.0), ["Na", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]])
    assert "collapsed" in check_structure(collapsed)[0]
    assert check_structure(None)[0] == "no structure was produced"
    # 6.9 Å apart in an 8 Å cube: each atom is alone within CHGNet's 6 Å graph cutoff.
    isolated = Structure(Lattice.cubic(8.0), ["Na", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]])
    assert check_structure(isolated)[0] == "isolated atoms (2 without a neighbour within 6.0 Å)"
    assert sanity_issue(isolated, -3.0) == f"relaxed structure: {check_structure(isolated)[0]}"
    assert sanity_issue(ok, float("nan")) == "non-finite relaxed energy (nan)"
    assert sanity_issue(ok, -3.6) is None


# --------------------------------------------------------------------------- makers


def test_generation_maker_records_sources_and_provenance(dao_env):
    maker = DAOGenerationMaker(n=2, n_random=2, n_template=2, steps=10, seed=3, scale=20.0)
    doc = maker.make.original(maker, "NaCl", 2)  # the job's function, run in-process
    assert isinstance(doc, GenerationDoc)
    assert [c.candidate_id for c in doc.candidates] == [
        "dao-g-000",
        "dao-g-001",
        "pyxtal-000",
        "pyxtal-001",
        "template-000",
        "template-001",
    ]
    assert [c.source for c in doc.candidates] == ["dao-g"] * 2 + ["pyxtal"] * 2 + ["template"] * 2
    rocksalt_template = doc.candidates[4]  # the closest template of NaCl is NaCl itself
    assert rocksalt_template.metadata["template_formula"] == "NaCl"
    assert rocksalt_template.metadata["supercell"] == 2 and rocksalt_template.valid
    assert doc.n_atoms == 4 and doc.reduced_formula == "NaCl"
    prov = doc.provenance
    assert prov["seed"] == 3 and prov["steps"] == 10 and prov["pyxtal_seed"] == 4
    assert len(prov["generator"]["sha256"]) == 64 and len(prov["guidance"]["sha256"]) == 64
    assert prov["generator"]["sha256"] != prov["guidance"]["sha256"]
    assert {"torch", "pymatgen", "jobflow", "chgnet", "dao_core"} <= set(prov["versions"])
    for c in doc.candidates:  # invalid ones carry the raw structure and a reason
        assert c.valid == (c.issue is None) == (c.structure is not None)
        assert c.raw_structure is not None
    assert all(c.valid for c in doc.candidates if c.source == "pyxtal")
    # Same seed -> same candidates (reproducibility).
    again = maker.make.original(maker, "NaCl", 2)
    for a, b in zip(doc.candidates, again.candidates, strict=True):
        assert np.allclose(a.raw_structure.lattice.matrix, b.raw_structure.lattice.matrix)


def test_a_dao_g_failure_keeps_the_other_sources(dao_env, monkeypatch):
    """DAO-G failing at run time (here: out of memory) costs its own slots only: they carry the
    reason, and the random and template candidates are made as without the failure."""
    import dao_core.csp

    def out_of_memory(*args, **kwargs):
        raise RuntimeError("CUDA out of memory")

    maker = DAOGenerationMaker(n=2, n_random=2, n_template=1, steps=10, seed=3)
    expected = maker.make.original(maker, "NaCl", 2)
    monkeypatch.setattr(dao_core.csp, "generate", out_of_memory)
    doc = maker.make.original(maker, "NaCl", 2)
    assert [c.candidate_id for c in doc.candidates] == [c.candidate_id for c in expected.candidates]
    for c in doc.candidates[:2]:
        assert not c.valid and "DAO-G failed: RuntimeError: CUDA out of memory" in c.issue
    assert "out of memory" in doc.provenance["generator_error"]
    for got, want in zip(doc.candidates[2:], expected.candidates[2:], strict=True):
        assert got.valid and got.structure == want.structure


def test_a_wrong_generation_request_is_an_error_not_a_lost_source(dao_env):
    """More sampling steps than the generator's noise levels is the user's error: the job
    says so instead of carrying on with the random and template candidates only."""
    maker = DAOGenerationMaker(n=2, n_random=2, n_template=0, steps=100_000, seed=3)
    with pytest.raises(DAOInputError, match="100000 sampling steps: .* so 1 to"):
        maker.make.original(maker, "NaCl", 2)


def test_batched_fire_matches_atomate2_relaxation(chgnet, dao_env):
    """Same optimiser, same potential: batched FIRE reproduces atomate2's per-structure run."""
    rng = np.random.default_rng(0)
    ideal = rocksalt(5.9)
    start = Structure(
        ideal.lattice,
        ideal.species,
        ideal.cart_coords + rng.normal(0, 0.03, (len(ideal), 3)),
        coords_are_cartesian=True,
    )
    maker = default_relax_maker(fmax=0.05, steps=200)
    doc = maker.make.original(maker, start)
    # The same crystal in a left-handed cell: CHGNet's stress flips sign with handedness, which
    # made such cells collapse before batched FIRE re-expressed them right-handed.
    mirror = Structure(
        -start.lattice.matrix, start.species, start.cart_coords, coords_are_cartesian=True
    )
    results, stats = batched_fire_relax(
        [start, nan_structure(), start.copy(), mirror], chgnet, fmax=0.05, steps=200
    )
    ref = doc.output.energy / len(start)
    for r in (results[0], results[2], results[3]):  # the NaN structure changes nothing
        assert r.converged and r.error is None
        assert abs(r.energy_per_atom - ref) * 1000 < 1.0  # meV/atom
        assert abs(r.structure.volume - doc.structure.volume) / doc.structure.volume < 1e-3
    assert results[1].structure is None and "non-finite" in results[1].error
    assert stats["model_calls"] >= results[0].n_steps


def test_batched_relax_maker_skips_rejected_candidates(dao_env):
    ok = CandidateDoc(candidate_id="pyxtal-000", index=0, source="pyxtal", structure=rocksalt(5.8))
    bad = CandidateDoc(
        candidate_id="dao-g-000", index=1, source="dao-g", valid=False, issue="exploded cell"
    )
    maker = BatchedRelaxMaker(fmax=0.1, steps=30, device="cpu")
    doc = maker.make.original(maker, [ok, bad])
    relaxed, skipped = doc.results
    assert relaxed.status == "relaxed" and relaxed.energy_per_atom < -3
    assert relaxed.energies and relaxed.n_steps <= 30
    assert skipped.status == "skipped" and "exploded cell" in skipped.reason
    assert doc.device == "cpu" and doc.n_model_calls >= 1


def test_ranking_deduplicates_and_ranks(dao_env):
    """Ranking on hand-made relaxation outputs: duplicates merged, failures recorded."""
    nacl = rocksalt()
    expanded = rocksalt(5.70)  # same structure type, slightly larger: a duplicate
    cscl = Structure(Lattice.cubic(3.4), ["Na", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]])
    cands = [
        CandidateDoc(
            candidate_id=f"pyxtal-{i:03d}", index=i, source="pyxtal", structure=s, raw_structure=s
        )
        for i, s in enumerate([nacl, expanded, cscl, nacl])
    ]
    cands.append(
        CandidateDoc(
            candidate_id="dao-g-000",
            index=4,
            source="dao-g",
            valid=False,
            raw_structure=nacl,
            issue="overlapping atoms (min 0.1 Å)",
        )
    )
    gen = GenerationDoc(
        formula="NaCl",
        reduced_formula="NaCl",
        n_atoms=8,
        n_dao_g=0,
        n_random=4,
        candidates=cands,
        provenance={},
        timings={"dao_g_s": 0.1},
    )
    docs = [
        {"structure": nacl.as_dict(), "output": {"energy_per_atom": -3.70}, "state": "successful"},
        {
            "structure": expanded.as_dict(),
            "output": {"energy_per_atom": -3.69},
            "state": "successful",
        },
        {"structure": cscl.as_dict(), "output": {"energy": -3.60 * 2}, "state": "failed"},
        None,  # a relaxation job that failed
        None,  # the rejected candidate's slot: no relaxation output
    ]
    maker = RankingMaker()
    jobs = [{"uuid": f"u{i}", "name": f"relax {c.candidate_id}"} for i, c in enumerate(cands)]
    response = maker.make.original(maker, gen, docs, run_uuid="run-1", relax_jobs=jobs)
    doc: CSPResultDoc = response.output
    assert doc.n_candidates == 5 and doc.n_relaxed == 3 and doc.n_unique == 2
    best, second = doc.polymorphs
    assert best.spacegroup_symbol == "Fm-3m" and best.spacegroup_number == 225
    assert best.duplicates == ["pyxtal-001"] and best.e_above_min_meV == 0.0
    assert second.spacegroup_symbol == "Pm-3m" and second.relax_status == "not converged"
    assert second.e_above_min_meV == pytest.approx(100.0)
    assert best.implausible is None and second.implausible == "relaxation did not converge"
    assert best.dao_p_score is not None  # scored with the (tiny) DAO-P model
    failed, rejected = doc.failed
    assert failed.candidate_id == "pyxtal-003" and failed.stage == "relaxation"
    assert failed.job_uuid == "u3" and "left no output" in failed.reason
    assert rejected.candidate_id == "dao-g-000" and rejected.stage == "generation"
    assert rejected.reason == "rejected before relaxation: overlapping atoms (min 0.1 Å)"
