"""DAO CSP workflow as whole flows: failure isolation, re-runs, sanity flags, DFT hooks, user
structures, SevenNet re-ranking (one maker at a time: test_makers.py; the command line:
test_cli.py).

Real components throughout: DAO-G/DAO-P checkpoints (tiny, untrained: their samples are
rejected as exploded cells, which exercises the rejection path), pyxtal candidates, CHGNet
relaxations (few steps), the embedded MontyDB store in a temporary folder.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass

import pytest
from csp_inputs import SMALL, cscl, rocksalt
from jobflow import Maker, job, run_locally
from pymatgen.core import Lattice, Structure

from dao_core.errors import DAOInputError
from dao_flows.flows import dao_csp_flow
from dao_flows.queries import export_structures, get_result, list_runs
from dao_flows.schemas import CandidateDoc, CSPResultDoc
from dao_flows.stores import get_store
from dao_flows.testing import nan_structure


@dataclass
class EchoDFTMaker(Maker):
    """A stand-in for dao_flows.qe.PWMaker: records what it was given."""

    name: str = "echo dft"

    @job
    def make(self, structure: Structure) -> dict:
        return {"nsites": len(structure), "formula": structure.composition.reduced_formula}


# --------------------------------------------------------------------------- whole flows


def _every_candidate_accounted_for(result: CSPResultDoc, n: int) -> None:
    """Each candidate is exactly once either ranked, a duplicate, or failed with a reason.

    (Untrained DAO-G samples may or may not pass the sanity checks: both paths are fine.)
    """
    seen = [p.candidate_id for p in result.polymorphs]
    seen += [d for p in result.polymorphs for d in p.duplicates]
    seen += [f.candidate_id for f in result.failed]
    assert sorted(seen) == sorted(f"dao-g-{i:03d}" for i in range(SMALL["n"])) + sorted(
        f"pyxtal-{i:03d}" for i in range(n - SMALL["n"])
    )
    assert result.n_relaxed == n - sum(f.stage != "ranking" for f in result.failed)
    for f in result.failed:
        assert f.reason
        if f.stage == "generation":
            assert f.source == "dao-g" and "rejected before relaxation" in f.reason


def _result_docs(store, run_uuid):
    return list(store.query({"output.doc_type": "dao_csp_result", "output.run_uuid": run_uuid}))


def test_polymorphs_far_above_the_best_are_flagged():
    """A converged result 1.7 eV/atom above the best is a trapped or broken cell, not a
    polymorph: it is flagged, never reported as ok."""
    from dao_flows.plausibility import MAX_E_ABOVE_BEST, implausibility

    assert implausibility(0.0, True) is None and implausibility(0.2, True) is None
    assert "above the best" in implausibility(1.7, True)
    assert "above the best" in implausibility(MAX_E_ABOVE_BEST + 0.01, False)
    assert implausibility(0.1, False) == "relaxation did not converge"


def test_a_potential_failure_never_ranks_first():
    """Seen on the GPU benchmark (Gd3In3Pd3): CHGNet ran one random cell, unconverged, to
    -87 eV/atom. It must not be rank 1 nor make every real polymorph "high E": rank 1 is the
    best converged cell, energies count from it, the failure is flagged and ranked last."""
    from dao_flows.ranking import Outcome, rank

    def outcome(name: str, a: float, energy: float, converged: bool) -> Outcome:
        c = CandidateDoc(candidate_id=name, index=0, source="pyxtal", structure=rocksalt(a))
        return Outcome(c, rocksalt(a), energy, converged, 300, None)

    broken = outcome("pyxtal-020", 9.0, -87.0, False)
    best = outcome("template-005", 5.64, -8.13, True)
    stuck = outcome("dao-g-001", 5.9, -8.10, False)  # close to the best: only unconverged
    high = outcome("pyxtal-003", 7.0, -7.0, True)
    groups = [(o, []) for o in (broken, best, stuck, high)]
    polymorphs = rank(groups, [None] * 4, symprec=0.1)
    assert [p.candidate_id for p in polymorphs] == [
        "template-005", "dao-g-001", "pyxtal-003", "pyxtal-020"
    ]  # fmt: skip
    first, second, third, last = polymorphs
    assert first.implausible is None and first.e_above_min_meV == 0.0
    assert second.implausible == "relaxation did not converge"
    assert "above the best" in third.implausible
    assert "below every converged polymorph" in last.implausible
    assert last.e_above_min_meV == pytest.approx(-78870.0)


def test_csp_flow_per_candidate_run_locally_and_rerun(dao_env):
    store = get_store()
    flow = dao_csp_flow("NaCl", relax="per-candidate", **SMALL)
    assert len(flow.jobs) == 1 + 5 + 1  # generation, one relaxation per candidate, ranking
    run_locally(flow, store=store, log=False)

    result = get_result("NaCl", store=store)
    assert isinstance(result, CSPResultDoc)
    assert result.run_uuid == flow.uuid and result.relax_mode == "per-candidate"
    assert result.n_candidates == 5
    _every_candidate_accounted_for(result, 5)
    assert result.polymorphs and result.polymorphs[0].e_above_min_meV == 0.0
    e = [p.energy_per_atom for p in result.polymorphs]
    assert e == sorted(e)
    for p in result.polymorphs:
        assert p.source in ("pyxtal", "dao-g")
        assert p.structure.composition.reduced_formula == "NaCl"
        assert 1 <= p.spacegroup_number <= 230 and p.n_relax_steps
    prov = result.provenance
    assert prov["generation"]["steps"] == 20 and prov["generation"]["seed"] == 11
    assert prov["relaxation"]["force_field_name"] == "CHGNet"
    assert prov["relaxation"]["relax_kwargs"]["fmax"] == 0.1
    assert "chgnet" in prov["versions"]
    assert {"generation_s", "relax_s", "ranking_s"} <= set(result.timings)

    # A fresh store object on the same folder sees everything (persistence).
    again = get_store()
    assert get_result(run_uuid=flow.uuid, store=again).n_unique == result.n_unique
    paths = export_structures("NaCl", dao_env["DAO_STORE_DIR"] + "/../cif", "cif", store=again)
    assert len(paths) == result.n_unique and all(p.read_text().startswith("#") for p in paths)


def test_failed_relaxation_job_does_not_take_the_run_down(dao_env):
    store = get_store()
    flow = dao_csp_flow("NaCl", relax="per-candidate", **SMALL)
    (bad,) = [j for j in flow.jobs if j.name.endswith("pyxtal-001")]
    bad.function_args = (nan_structure(),)  # inject a candidate whose relaxation raises
    run_locally(flow, store=store, log=False)

    result = get_result(run_uuid=flow.uuid, store=store)
    assert result is not None
    failed = {f.candidate_id: f for f in result.failed}
    assert failed["pyxtal-001"].stage == "relaxation"
    assert failed["pyxtal-001"].job_uuid == bad.uuid
    assert "left no output" in failed["pyxtal-001"].reason
    ranked = {p.candidate_id for p in result.polymorphs} | {
        d for p in result.polymorphs for d in p.duplicates
    }
    assert {"pyxtal-000", "pyxtal-002"} <= ranked  # the others were relaxed and ranked
    # The store holds every other job's output, and nothing for the failed one.
    assert store.query_one({"uuid": bad.uuid}) is None
    for other in flow.jobs:
        if other is not bad:
            assert store.query_one({"uuid": other.uuid}) is not None, other.name


def test_template_slots_match_the_fitting_templates(dao_env, tmp_path):
    """Per-candidate flows fan out before generation runs: the flow asks the library how many
    templates fit and makes exactly that many template slots (6 asked; 4 fit here: two
    templates, each with both ways of putting Na and Cl on its sites); template candidates are
    relaxed and ranked with the others."""
    folder = tmp_path / "templates"
    folder.mkdir()
    rocksalt().to(filename=str(folder / "NaCl.cif"))
    Structure(Lattice.cubic(3.4), ["Cs", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]]).to(
        filename=str(folder / "CsCl.cif")
    )
    options = {**SMALL, "n_random": 0, "n_template": 6, "templates": str(folder)}
    flow = dao_csp_flow("NaCl", relax="per-candidate", **options)
    relax_names = [j.name for j in flow.jobs if "template" in j.name]
    assert len(relax_names) == 4
    store = get_store()
    run_locally(flow, store=store, log=False)
    result = get_result(run_uuid=flow.uuid, store=store)
    assert result.n_candidates == SMALL["n"] + 4
    sources = {p.source for p in result.polymorphs}
    assert "template" in sources
    best_template = next(p for p in result.polymorphs if p.source == "template")
    assert best_template.spacegroup_number in (221, 225)  # CsCl or rocksalt type


def test_csp_flow_batched_and_rerun(dao_env):
    store = get_store()
    flow = dao_csp_flow("NaCl", relax="batched", **SMALL)
    assert [j.name for j in flow.jobs] == ["dao generate", "dao batched relax", "dao rank"]
    run_locally(flow, store=store, log=False)
    result = get_result(run_uuid=flow.uuid, store=store)

    n_docs = store.count()
    n_blobs = store.additional_stores["data"].count()
    run_locally(flow, store=store, log=False)  # same flow object again: upsert, no duplicates
    assert store.count() == n_docs
    assert store.additional_stores["data"].count() == n_blobs  # no orphaned blobs either
    assert len(_result_docs(store, flow.uuid)) == 1
    assert len(list_runs("NaCl", store=store)) == 1
    assert result.relax_mode == "batched" and result.n_candidates == 5
    assert result.provenance["relaxation"]["n_model_calls"] > 0
    _every_candidate_accounted_for(result, 5)
    # Per-step energies went to the `data` store, not into the document.
    batch = store.query_one({"name": "dao batched relax"}, load=False)
    assert store.additional_stores["data"].count() >= 3
    assert "blob_uuid" in str(batch["output"]["results"])


def test_verify_top_hook_adds_dft_jobs(dao_env):
    """verify_top=K calls dft_maker.make(structure) on the K best (here a stand-in maker)."""
    flow = dao_csp_flow("NaCl", relax="batched", verify_top=1, dft_maker=EchoDFTMaker(), **SMALL)
    store = get_store()
    run_locally(flow, store=store, log=False)
    result = get_result(run_uuid=flow.uuid, store=store)
    assert len(result.verify_jobs) == 1
    verify = store.query_one({"uuid": result.verify_jobs[0]})
    assert verify["name"].startswith("verify rank-1")
    assert verify["output"]["nsites"] == len(result.polymorphs[0].structure)


def test_verify_top_defaults_to_quantum_espresso(dao_env):
    """With no dft_maker, verify_top wires dao_flows.qe.PWMaker (imported lazily)."""
    from dao_flows.qe import PWMaker

    flow = dao_csp_flow("NaCl", n=1, verify_top=2)
    last = flow.jobs[-1]  # the re-ranking job: DFT checks the final order
    assert last.name == "dao refine"
    assert isinstance(last.function_kwargs["dft_maker"], PWMaker)
    assert last.function_kwargs["verify_top"] == 2
    assert "dft_maker" not in flow.jobs[-2].function_kwargs  # not the ranking's order
    unrefined = dao_csp_flow("NaCl", n=1, verify_top=2, refine_top=0).jobs[-1]
    assert unrefined.name == "dao rank" and unrefined.function_kwargs["verify_top"] == 2
    assert dao_csp_flow("NaCl", n=1).jobs[-1].function_kwargs["dft_maker"] is None
    with pytest.raises(DAOInputError, match="verify_top"):
        dao_csp_flow("NaCl", n=1, verify_top=-1)


def test_unguided_flow_skips_dao_p(dao_env):
    def ranking(flow):  # type: ignore[no-untyped-def]
        return next(j for j in flow.jobs if j.name == "dao rank")

    flow = dao_csp_flow("NaCl", n=1, guidance=None)
    assert flow.jobs[0].maker.guidance is None and ranking(flow).maker.score_model is None
    guided = dao_csp_flow("NaCl", n=1)
    assert ranking(guided).maker.score_model == dao_env["DAO_P_MODEL"]
    with pytest.raises(DAOInputError, match="neither a checkpoint"):
        dao_csp_flow("NaCl", n=1, model="no-such-model")  # checked before any job exists
    for steps in (0, 100_000):  # outside the generator's 1..T, also checked before any job
        with pytest.raises(DAOInputError, match=f"^{steps} sampling steps: .* so 1 to"):
            dao_csp_flow("NaCl", n=1, steps=steps)


def test_user_structures_are_ranked_with_the_generated_ones(dao_env, tmp_path):
    """A user's CIF of rocksalt NaCl (a seed, with the wrong lattice constant) relaxes to the
    CHGNet rocksalt minimum and is ranked, tagged "user", beside the generated candidates in
    both relaxation modes; a file of another composition fails before any job exists."""
    from dao_flows.local import run_in_memory

    cif = tmp_path / "guess.cif"
    rocksalt(6.0).to(filename=str(cif))
    options = dict(SMALL, n_random=1, structures=[str(cif)])
    for relax in ("batched", "per-candidate"):
        flow = dao_csp_flow("NaCl", relax=relax, **options)
        result = run_in_memory(flow)
        user = [p for p in result.polymorphs if p.source == "user"]
        assert result.n_candidates == 4 and len(user) == 1
        assert user[0].spacegroup_number == 225
        a = (8 * user[0].structure.volume / len(user[0].structure)) ** (1 / 3)
        assert 5.55 < a < 5.85  # from 6.0 to rocksalt's 5.64 (CHGNet: 5.73)
    wrong = tmp_path / "kcl.cif"
    Structure.from_spacegroup("Fm-3m", Lattice.cubic(6.3), ["K", "Cl"],
                              [[0, 0, 0], [0.5, 0.5, 0.5]]).to(filename=str(wrong))  # fmt: skip
    with pytest.raises(DAOInputError, match=r"kcl.cif is KCl, not NaCl"):
        dao_csp_flow("NaCl", **dict(SMALL, structures=[str(wrong)]))
    with pytest.raises(DAOInputError, match="cannot read user structure"):
        dao_csp_flow("NaCl", **dict(SMALL, structures=[str(tmp_path / "missing.cif")]))


def test_refine_reranks_the_best_with_sevennet(dao_env, tmp_path):
    """refine_top=3: the best CHGNet polymorphs of NaCl (rocksalt and CsCl type given as user
    seeds, beside one short DAO-G sample) are relaxed again with SevenNet-l3i5 and ordered by
    its energy; rocksalt lies below CsCl for it too, and the result records the potential."""
    pytest.importorskip("sevenn")
    from dao_flows.local import run_in_memory

    seeds = []
    for name, structure in [("rocksalt", rocksalt(5.5)), ("cscl", cscl())]:
        seeds.append(str(tmp_path / f"{name}.cif"))
        structure.to(filename=seeds[-1])
    result = run_in_memory(
        dao_csp_flow(
            "NaCl",
            n=1,
            n_random=0,
            n_template=0,
            steps=10,
            seed=0,
            structures=seeds,
            refine_top=3,
            fmax=0.1,
        )  # fmt: skip
    )
    refined = [p for p in result.polymorphs if p.refined_energy_per_atom is not None]
    assert [p.rank for p in refined] == list(range(1, min(3, len(result.polymorphs)) + 1))
    order = [(p.implausible is not None, p.refined_energy_per_atom) for p in refined]
    assert order == sorted(order) and refined[0].refined_e_above_min_meV == 0
    by_group = {p.spacegroup_number: p.refined_energy_per_atom for p in refined}
    assert by_group[225] < by_group[221]  # rocksalt below CsCl type
    assert result.provenance["refined_by"]["model"] == "7net-l3i5"
    assert result.timings["refine_s"] > 0
    from dao_flows.report import result_table

    assert "7net-l3i5" in result_table(result).caption  # the table says what ordered it

    # A polymorph the potential cannot relax stays, below the refined ones, with its reason;
    # a potential that cannot be loaded leaves the ranking unchanged.
    from dao_flows.refine import RefineMaker
    from dao_flows.testing import nan_structure

    first, *rest = result.polymorphs
    broken = result.model_copy(
        update={"polymorphs": [first.model_copy(update={"structure": nan_structure()}), *rest]}
    )
    again = RefineMaker(top=3).rerank(broken)
    last_refined = again.polymorphs[min(3, len(again.polymorphs)) - 1]
    assert (
        last_refined.candidate_id == first.candidate_id
        and last_refined.refined_energy_per_atom is None
    )
    assert first.candidate_id in again.provenance["refined_by"]["errors"]
    assert [p.rank for p in again.polymorphs] == list(range(1, len(again.polymorphs) + 1))
    unknown = RefineMaker(top=3, force_field_name="NoSuchPotential").rerank(result)
    assert unknown.polymorphs == result.polymorphs
    assert "error" in unknown.provenance["refined_by"]
    # The ranking's tiers hold within the re-ranked top: a potential failure lands below an
    # unconverged cell even where its new energy is lower; an old document's flag-less
    # "implausible" counts as unconverged-like (tier 1), so the energy decides between them.
    low, high = sorted(refined[:2], key=lambda p: p.refined_energy_per_atom)

    def flagged(low_flag: str | None) -> list[str]:
        marks = {low.candidate_id: low_flag, high.candidate_id: "unconverged"}
        polys = [
            p.model_copy(update={"flag": marks[p.candidate_id], "implausible": "flagged"})
            for p in result.polymorphs
            if p.candidate_id in marks
        ]
        reranked = RefineMaker(top=2).rerank(result.model_copy(update={"polymorphs": polys}))
        return [p.candidate_id for p in reranked.polymorphs]

    assert flagged("potential_failed") == [high.candidate_id, low.candidate_id]
    assert flagged(None) == [low.candidate_id, high.candidate_id]
    # The same re-ranking as one torch-sim batch: the same order, energies within 1 meV/atom
    # (0.73 at most on 20 CsV3Sb5 candidates), and the broken polymorph still isolated.
    if importlib.util.find_spec("torch_sim"):
        batched = RefineMaker(top=3, optimizer="torch-sim").rerank(broken)
        assert [p.candidate_id for p in batched.polymorphs] == [
            p.candidate_id for p in again.polymorphs
        ]
        for a, b in zip(batched.polymorphs[:3], again.polymorphs[:3], strict=False):
            if b.refined_energy_per_atom is None:
                assert a.refined_energy_per_atom is None
            else:
                assert abs(a.refined_energy_per_atom - b.refined_energy_per_atom) < 1e-3
        assert first.candidate_id in batched.provenance["refined_by"]["errors"]
