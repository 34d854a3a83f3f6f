"""Property fine-tuning on DAO-P: the case-study filter, recorded disjoint folds, training that
learns, the checkpoint round trip (heads-only and full), and ``dao predict``."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from pymatgen.core import Lattice, Structure
from typer.testing import CliRunner

from dao_core.checkpoint import load_model, save_model
from dao_core.dao import DAOModel
from dao_core.data import CrystalRecord, load_csv, record_from_structure
from dao_core.errors import DAOInputError
from dao_core.model import CrysformerConfig
from dao_core.properties import (
    PropertyModel,
    PropertySpec,
    load_property_model,
    save_property_model,
)
from dao_core.property_training import (
    FinetuneConfig,
    assign_folds,
    cross_validate,
    exclude_cases,
    features,
    fit_full,
    is_case_composition,
    load_folds,
    reduced_formula,
    save_folds,
)
from dao_flows.cli import app


def _structures() -> list[tuple[str, Structure, float]]:
    """Small ordered crystals with a made-up property (id, structure, value)."""
    out = []
    for i, (a, b) in enumerate([("Na", "Cl"), ("K", "Br"), ("Mg", "O"), ("Li", "F"), ("Ca", "S")]):
        for j, scale in enumerate((1.0, 1.05, 1.1)):
            s = Structure(Lattice.cubic(4.2 * scale), [a, b], [[0, 0, 0], [0.5, 0.5, 0.5]])
            out.append((f"x-{i}-{j}", s, float(i + j)))
    return out


def _records() -> list[CrystalRecord]:
    return [record_from_structure(s, v, mid) for mid, s, v in _structures()]


@pytest.fixture(scope="module")
def backbone(tmp_path_factory: pytest.TempPathFactory) -> DAOModel:
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("backbone") / "tiny-dao-p"
    save_model(DAOModel("dao-p", CrysformerConfig.preset("tiny")), path)
    model = load_model(path, device="cpu")
    model.name = str(path)
    return model


def test_case_compositions_are_recognised() -> None:
    for formula in ("CsV3Sb5", "KV3Sb5", "RbV3Sb5", "NaV3Sb5", "Cs2V6Sb10", "Zr16Rh8O4",
                    "Zr4Pd2O", "Cr3Os", "Cr6Os2"):  # fmt: skip
        assert is_case_composition(formula), formula
    for formula in ("V3Sb5", "CsV3Sb4", "CaV3Sb5", "Nb3Sn", "Zr4Rh2", "Cr3Ir", "MgB2"):
        assert not is_case_composition(formula), formula


def test_exclude_cases_removes_the_case_structures(datasets_dir: Path) -> None:
    cases = datasets_dir.parent / "cases"
    if not cases.is_dir():
        pytest.skip(f"case-study folder {cases} not found")
    frame = pd.read_csv(datasets_dir / "mp_3dsc" / "structures.csv", nrows=20)
    records = [record_from_structure(Structure.from_str(c, fmt="cif"), 0.0, m)
               for m, c in zip(frame["material_id"], frame["cif"], strict=True)]  # fmt: skip
    for path in sorted(cases.glob("*.cif")):
        records.append(record_from_structure(Structure.from_file(path), 2.0, path.stem))
    kept, removed = exclude_cases(records)
    assert sorted(removed) == sorted(p.stem for p in cases.glob("*.cif"))
    assert [r.material_id for r in kept] == [str(m) for m in frame["material_id"]]


def test_folds_are_disjoint_grouped_seeded_and_recorded(tmp_path: Path) -> None:
    ids = [f"m{i}" for i in range(40)]
    groups = [f"g{i // 3}" for i in range(40)]  # groups of three
    folds = assign_folds(ids, groups, 5, seed=1)
    assert set(folds) == set(ids) and set(folds.values()) == set(range(5))
    for g in set(groups):
        assert len({folds[m] for m, h in zip(ids, groups, strict=True) if h == g}) == 1
    sizes = np.bincount(list(folds.values()))
    assert sizes.max() - sizes.min() <= 3
    assert assign_folds(ids, groups, 5, seed=1) == folds
    assert assign_folds(ids, groups, 5, seed=2) != folds
    path = save_folds(tmp_path / "folds.json", folds, {"seed": 1})
    assert load_folds(path) == folds


def test_full_finetuning_on_3dsc_reduces_training_error(
    datasets_dir: Path, backbone: DAOModel, tmp_path: Path
) -> None:
    frame = pd.read_csv(datasets_dir / "mp_3dsc" / "structures.csv")
    small = frame[frame["natoms"] <= 4].head(24)
    small.to_csv(tmp_path / "small.csv")
    records = load_csv(tmp_path / "small.csv", "tc", cache_dir="")
    spec = PropertySpec("tc", "K", "log1p")
    y = torch.tensor(spec.forward(np.array([r.energy for r in records])), dtype=torch.float32)
    cfg = FinetuneConfig(epochs=30, lr=3e-3, backbone_lr=1e-3, batch_size=8, inner_val=0.0)
    model = PropertyModel(spec, backbone.config, members=1, width=64, shared_backbone=False)
    model.backbones[0].load_state_dict(backbone.net.state_dict())

    def train_l1() -> float:
        with torch.no_grad():
            pred = model.heads[0](features(model.backbone(0), records))
        return float((pred - y).abs().mean())

    model.heads[0].set_statistics(features(model.backbone(0), records), y)
    before = train_l1()
    fit_full(model, 0, records, y, cfg, seed=0, device=torch.device("cpu"))
    assert train_l1() < 0.7 * before


def test_round_trip_predict_and_backbone_check(backbone: DAOModel, tmp_path: Path) -> None:
    records = _records()
    spec = PropertySpec("value", "u", "log1p")
    folds = assign_folds([r.material_id for r in records],
                         [reduced_formula(r.atomic_numbers) for r in records], 5, 0)  # fmt: skip
    model, report = cross_validate(backbone, records, spec, folds, FinetuneConfig(epochs=20))
    assert len(report["folds"]) == 5 and len(report["predictions"]) == len(records)
    assert np.isfinite(report["overall"]["physical"]["mae"])
    save_property_model(model, tmp_path / "prop")
    loaded = load_property_model(tmp_path / "prop", device="cpu")
    np.testing.assert_allclose(
        loaded.predict_records(records), model.predict_records(records), rtol=1e-5, atol=1e-6
    )
    with pytest.raises(DAOInputError, match="is a property model"):
        load_model(tmp_path / "prop")

    cif = tmp_path / "NaCl.cif"
    _structures()[0][1].to(filename=str(cif))
    res = CliRunner().invoke(app, ["predict", "--model", str(tmp_path / "prop"), str(cif)])
    assert res.exit_code == 0, res.output
    assert "NaCl" in res.output and "±" in res.output

    # A changed backbone must not silently change the predictions.
    weights = Path(backbone.name) / "model.safetensors"
    original = weights.read_bytes()
    try:
        torch.manual_seed(1)
        save_model(DAOModel("dao-p", CrysformerConfig.preset("tiny")), backbone.name)
        with pytest.raises(DAOInputError, match="retrain its heads"):
            load_property_model(tmp_path / "prop")
    finally:
        weights.write_bytes(original)


def test_full_model_stores_its_backbones(backbone: DAOModel, tmp_path: Path) -> None:
    records = _records()
    folds = {r.material_id: i % 2 for i, r in enumerate(records)}
    cfg = FinetuneConfig(epochs=1, mode="full", batch_size=8)
    model, _ = cross_validate(backbone, records, PropertySpec("value"), folds, cfg)
    save_property_model(model, tmp_path / "full", torch.float16)
    loaded = load_property_model(tmp_path / "full", device="cpu")
    assert len(loaded.backbones) == 2
    np.testing.assert_allclose(
        loaded.predict_records(records), model.predict_records(records), rtol=2e-2, atol=2e-2
    )


def test_dao_train_dao_p_prop_writes_model_folds_and_cv(backbone: DAOModel, tmp_path: Path) -> None:
    rows = [{"material_id": m, "cif": s.to(fmt="cif"), "value": v} for m, s, v in _structures()]
    pd.DataFrame(rows).to_csv(tmp_path / "data.csv")
    out = tmp_path / "prop"
    args = ["train", "--model", "dao-p-prop", "--data", f"{tmp_path / 'data.csv'}:value",
            "--init", backbone.name, "--out", str(out), "--transform", "log1p"]  # fmt: skip
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 0, res.output
    assert "overall (out-of-fold" in res.output
    record = load_property_model(out, device="cpu").record
    assert record["folds"]["k"] == 5 and record["case_structures_removed"] == []
    assert set(load_folds(out / "folds.json")) == {m for m, _, _ in _structures()}
    assert (out / "cv.json").is_file() and (out / "cv_predictions.csv").is_file()


def test_extra_structures_train_every_member_and_are_never_scored(backbone: DAOModel) -> None:
    records = _records()
    folds = {r.material_id: i % 3 for i, r in enumerate(records)}
    extra = [replace(r, material_id=f"gen-{i}") for i, r in enumerate(records[:4])]
    cfg = FinetuneConfig(epochs=2)
    _, plain = cross_validate(backbone, records, PropertySpec("value"), folds, cfg)
    _, report = cross_validate(backbone, records, PropertySpec("value"), folds, cfg, extra=extra)
    assert [r["material_id"] for r in report["predictions"]] == [r.material_id for r in records]
    assert [f["n_train"] - g["n_train"] for f, g in zip(report["folds"], plain["folds"],
                                                         strict=True)] == [4, 4, 4]  # fmt: skip
    assert report["overall"]["physical"]["n"] == len(records)
