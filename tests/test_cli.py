"""The `dao` command line on the CSP workflow: csp/query/export, benchmark-csp, and the makers'
defaults it shares with dao_csp_flow.

Real components throughout, as in test_flows.py: DAO-G/DAO-P checkpoints (tiny, untrained),
CHGNet relaxations (few steps), the embedded MontyDB store in a temporary folder.
"""

from __future__ import annotations

import json

import pytest
from csp_inputs import rocksalt
from typer.testing import CliRunner

from dao_core.errors import DAOInputError
from dao_flows.generation import DAOGenerationMaker


def test_cli_csp_query_export(dao_env, tmp_path):
    from dao_flows.cli import app

    runner = CliRunner()
    out = tmp_path / "csp_out"
    res = runner.invoke(
        app,
        "csp NaCl --n 1 --n-random 2 --n-template 1 --steps 10 --formula-units 2 --seed 5 "
        "--relax-steps 20 --fmax 0.1 --device cpu".split()
        + ["--out", str(out)],
    )
    assert res.exit_code == 0, res.output
    assert "unique / 4 candidates" in res.output and "meV/atom" in res.output
    assert "#225" in res.output or "pyxtal" in res.output
    assert (out / "energy_ranking.png").stat().st_size > 1000
    cifs = sorted(out.glob("rank*.cif"))
    assert cifs and cifs[0].name.startswith("rank01_NaCl")

    res = runner.invoke(app, ["query", "NaCl"])
    assert res.exit_code == 0, res.output
    assert "unique / 4 candidates" in res.output and "1 run(s) for NaCl" in res.output
    res = runner.invoke(app, ["query", "--runs"])
    assert res.exit_code == 0 and "NaCl" in res.output
    res = runner.invoke(
        app, ["export", "NaCl", "--format", "poscar", "--out", str(tmp_path / "poscars")]
    )
    assert res.exit_code == 0, res.output
    assert len(list((tmp_path / "poscars").glob("*.vasp"))) == len(cifs)

    res = runner.invoke(app, ["csp", "Xx2O", "--n", "1"])
    assert res.exit_code == 2 and "element" in res.output
    res = runner.invoke(app, ["csp", "NaCl", "--n", "0"])
    assert res.exit_code == 2 and "at least 1" in res.output
    res = runner.invoke(app, ["query", "KBr"])
    assert res.exit_code == 1


def test_benchmark_csp_counts_a_template_hit_against_the_relaxed_reference(dao_env):
    """The end-to-end benchmark on rocksalt NaCl (8-atom conventional cell): the bundled
    library's rocksalt templates, relaxed and ranked first, match the CHGNet-relaxed reference
    at both tolerances; the summary counts the hit by its source."""
    from dao_core.data import CrystalRecord
    from dao_flows.benchmark_csp import cell_formula, rows_from_json, run_benchmark_csp, to_json

    record = CrystalRecord.from_structure(rocksalt(5.5), material_id="nacl")
    assert cell_formula(record) == "Na4Cl4"
    # No random candidates: one relaxing into rocksalt too could represent the group instead.
    options = dict(n=1, n_random=0, n_template=2, steps=10, seed=0, fmax=0.1)
    (row,), summary = run_benchmark_csp([record], options, top=5, save_structures=True)
    assert row.error is None and row.n_atoms == 8
    assert row.top[0]["rank"] == 1 and row.top[0]["matches"]["cspbench"]
    assert row.top[0]["source"] == "template" and "cif" in row.top[0] and row.reference_cif
    assert row.hit_rank["diffcsp"] == 1 and row.hit_rank["cspbench"] == 1
    assert row.hit_source["diffcsp"] == "template"
    assert abs(row.e_best_minus_reference_meV) < 5  # the same structure, relaxed alike
    assert summary["top1_diffcsp"] == 1.0 and summary["top1_by_source_cspbench"] == {"template": 1}
    # Scored by mix from the same pool: any mix with the templates has the hit; pyxtal (no
    # candidates here) has none.
    mixes = row.top1_by_mix["diffcsp"]
    assert mixes["template"] and mixes["dao-g+template"] and not mixes["pyxtal"]
    assert summary["top1_by_mix_cspbench"]["template"] == 1.0
    # A resumed run keeps a finished composition's row instead of running it again.
    saved = rows_from_json(json.loads(json.dumps(to_json([row], summary, options))))
    again, _ = run_benchmark_csp([record], options, done=saved)
    assert again == [row]


def test_benchmark_csp_ids_select_and_name_unknown_ones(tmp_path):
    """``--ids`` picks crystals by material id; an id the data lacks ends the command with its
    name before anything runs."""
    from dao_core.data import CrystalRecord
    from dao_core.data.files import save_records
    from dao_flows.cli import app

    data = save_records(
        tmp_path / "two.npz", [CrystalRecord.from_structure(rocksalt(5.6), material_id="nacl")]
    )
    ids = tmp_path / "ids.txt"
    ids.write_text("nacl\nmp-0000\n")
    res = CliRunner().invoke(app, ["benchmark-csp", "--data", str(data), "--ids", str(ids)])
    assert res.exit_code == 2 and "mp-0000" in res.output and "nacl," not in res.output


def test_cli_and_flow_share_the_makers_defaults(monkeypatch):
    """`dao csp` passes only the options it was given, and dao_csp_flow with none builds the
    Makers' own defaults: one set of defaults, stated once, in the Makers."""
    import dao_flows.flows as flows
    from dao_flows.cli import app
    from dao_flows.flows import DAOCSPMaker, default_options

    seen = []

    def record(formula, **options):
        seen.append(options)
        raise DAOInputError("recorded")  # stop before anything runs

    monkeypatch.setattr(flows, "dao_csp_flow", record)
    result = CliRunner().invoke(app, ["csp", "NaCl"])
    assert "recorded" in result.output and seen == [{}]
    CliRunner().invoke(app, ["csp", "NaCl", "--n", "3", "--guidance", "none"])
    assert seen[-1] == {"n": 3, "guidance": None}
    assert DAOCSPMaker.from_options() == DAOCSPMaker()
    defaults = default_options(DAOCSPMaker())
    assert defaults["relax_steps"][0] == flows.BatchedRelaxMaker.steps
    assert defaults["n"][0] == DAOGenerationMaker.n and defaults["relax"][0] == "batched"
    with pytest.raises(DAOInputError, match="unknown CSP option.*'nn'"):
        DAOCSPMaker.from_options(nn=3)


def test_models_name_the_training_data_of_every_bundled_model():
    """`dao models` names each model's data sets, not the folders they were staged in."""
    from dao_core.checkpoint import bundled_models, read_config
    from dao_flows.cli.models import dataset_name

    assert dataset_name("runs/preprocessed/le20.npz:") == "le20"
    assert dataset_name("dao preprocess of perov5.npz") == "perov5"
    assert dataset_name("../shared/datasets/mp_3dsc/structures.csv:tc") == "mp_3dsc"
    assert dataset_name("data/mp_2025/le20.csv.gz:formation_energy_per_atom") == "le20"
    names = {
        m: [dataset_name(d) for d in read_config(m)["record"]["data"]] for m in bundled_models()
    }
    assert names["dao-g-base"] == ["le20", "perov5", "carbon24"]
    assert names["dao-p-tc"] == ["mp_3dsc"]
    assert all(n and all(n) for n in names.values()), names  # a name for every entry
