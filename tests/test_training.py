"""Training: a tiny DAO-G learns real structures, DDP keeps ranks identical, runs resume,
checkpoints round-trip."""

import json
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from dao_core.benchmark import run_benchmark
from dao_core.checkpoint import file_hash, load_model, save_model
from dao_core.dao import DAOModel, EnergyLabel
from dao_core.data import CrystalBatch, load_csv, split_records
from dao_core.diffusion import SamplerSettings, add_noise
from dao_core.errors import DAOInputError
from dao_core.model import CrysformerConfig
from dao_core.train import TrainConfig, WeightAverage, evaluate, split_datasets, train

# Three small MP-20 crystals of different prototypes: rocksalt SrTe, AlB2-type YSi2, CsCl-type ZrOs.
HANDFUL = ["mp-1958", "mp-2568", "mp-11541"]


@pytest.fixture(scope="module")
def handful(datasets_dir: Path) -> list:
    records = load_csv(datasets_dir / "mp_20_slice" / "train.csv")
    chosen = [r for r in records if r.material_id in HANDFUL]
    assert len(chosen) == 3
    return chosen


def test_tiny_dao_g_reproduces_its_training_structures(handful: list, tmp_path: Path) -> None:
    torch.manual_seed(0)
    cfg = TrainConfig(
        kind="dao-g", preset="tiny", out=str(tmp_path / "run"), max_steps=1200, batch_size=48,
        lr=3e-3, warmup=30, eval_every=10**9, save_every=10**9, seed=0,
    )  # fmt: skip
    train(cfg, handful * 16, [])
    model = load_model(tmp_path / "run" / "final", device="cpu")
    result = run_benchmark(model, handful * 3, samples=1, steps=1000, n_jobs=1, seed=0)
    # Measured: 9/9 matched, RMSE 0.002-0.08 (2-core CPU); allow one miss for platform noise.
    assert result.match_rate >= 8 / 9
    assert result.rmse is not None and result.rmse < 0.1


def test_resume_continues_the_same_run(handful: list, tmp_path: Path) -> None:
    out = tmp_path / "run"
    base = dict(kind="dao-g", preset="tiny", out=str(out), batch_size=8, warmup=2, ema_decay=0.9,
                eval_every=10**9, save_every=10**9, sampling={"step_lr": 5e-7})  # fmt: skip
    train(TrainConfig(**base, max_steps=30, time_limit=1e-9), handful, [])  # stops after 1 step
    state = torch.load(out / "trainer_state.pt", weights_only=True)
    assert state["step"] == 1 and not (out / "final").exists()
    train(TrainConfig(**base, max_steps=30), handful, [])
    state = torch.load(out / "trainer_state.pt", weights_only=True)
    assert state["step"] == 30
    history = json.loads((out / "history.json").read_text())
    assert history[-1]["step"] == 30 and (out / "final" / "model.safetensors").is_file()
    final = load_model(out / "final")
    assert final.sampling == SamplerSettings(step_lr=5e-7, temperature=1.0)
    # "final" holds the weight average carried through the restart, "last" the raw weights.
    averaged = state["average"]
    for name, value in final.state_dict().items():
        assert torch.equal(value, averaged[name].to(value.dtype)), name
    raw = load_model(out / "last").state_dict()
    assert any(not torch.equal(v, raw[k]) for k, v in final.state_dict().items())


def test_weight_average_is_an_exponential_moving_average() -> None:
    torch.manual_seed(0)
    model = DAOModel("dao-g", CrysformerConfig.preset("tiny"))
    start = {k: v.clone() for k, v in model.state_dict().items()}
    average = WeightAverage(model, decay=0.75)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p))
    average.update(model)
    now = model.state_dict()
    for name, value in average.model.state_dict().items():
        if value.is_floating_point():
            expected = 0.75 * start[name] + 0.25 * now[name]
            torch.testing.assert_close(value, expected, rtol=1e-6, atol=1e-6)


def test_checkpoint_round_trip_and_hash(tmp_path: Path) -> None:
    torch.manual_seed(0)
    tuned = SamplerSettings(step_lr=5e-6, temperature=0.7)
    model = DAOModel("dao-p", CrysformerConfig.preset("tiny"), sampling=tuned).eval()
    digest = save_model(model, tmp_path / "fp32")
    assert digest == file_hash(tmp_path / "fp32" / "model.safetensors")
    loaded = load_model(tmp_path / "fp32", device="cpu")
    assert loaded.content_hash == digest and loaded.kind == "dao-p"
    assert loaded.sampling == tuned  # a model's tuned sampler settings travel with it
    args = (CrystalBatch(torch.tensor([[8, 22, 38, 8, 8]]), torch.rand(1, 5, 3),
                         4 * torch.eye(3)[None], torch.ones(1, 5, dtype=torch.bool)),
            torch.tensor([10]))  # fmt: skip
    with torch.no_grad():
        assert torch.equal(model(*args).energy, loaded(*args).energy)
    save_model(model, tmp_path / "fp16", dtype=torch.float16)
    half = (tmp_path / "fp16" / "model.safetensors").stat().st_size
    assert half < 0.55 * (tmp_path / "fp32" / "model.safetensors").stat().st_size
    with torch.no_grad():
        diff = model(*args).energy - load_model(tmp_path / "fp16", device="cpu")(*args).energy
    assert diff.abs().max() < 1e-2


def test_dao_p_starts_from_a_dao_g_backbone(handful: list, tmp_path: Path) -> None:
    """`--init` a DAO-G for a DAO-P run: the backbone is the generator's, the energy label is
    the run's own (its data's statistics), and a DAO-P cannot initialise a DAO-G."""
    torch.manual_seed(0)
    generator = DAOModel("dao-g", CrysformerConfig.preset("tiny"))
    save_model(generator, tmp_path / "g")
    labelled = [replace(r, energy=-float(i)) for i, r in enumerate(handful)]
    cfg = TrainConfig(
        kind="dao-p", preset="tiny", out=str(tmp_path / "p"), init=str(tmp_path / "g"),
        max_steps=1, batch_size=3, warmup=1, eval_every=10**9, save_every=10**9,
        label_name="e_form", lr=1e-12,
    )  # fmt: skip
    train(cfg, labelled, [])
    dao_p = load_model(tmp_path / "p" / "final", device="cpu")
    assert dao_p.kind == "dao-p" and dao_p.label.name == "e_form"
    assert dao_p.label.mean == pytest.approx(-1.0) and dao_p.label.std == pytest.approx(
        0.8165, 1e-3
    )
    backbone = dao_p.net.layers[0].qkv.weight
    assert torch.allclose(backbone, generator.net.layers[0].qkv.weight, atol=1e-6)
    with pytest.raises(ValueError, match="is a dao-p model, not dao-g"):
        again = replace(cfg, kind="dao-g", out=str(tmp_path / "g2"), init=str(tmp_path / "p/final"))
        train(again, handful, [])


def test_bad_checkpoints_raise_clear_errors(tmp_path: Path) -> None:
    with pytest.raises(DAOInputError, match="no-such-model"):
        load_model("no-such-model")
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "model.safetensors").write_bytes(b"not a tensor file")
    (broken / "config.json").write_text("{}")
    with pytest.raises(DAOInputError, match="unreadable"):
        load_model(broken)


DDP_SCRIPT = """
import os, sys, torch
from dao_core.data import CrystalBatch, load_csv
from dao_core.train import TrainConfig, train

ids = {"mp-1958", "mp-2568", "mp-11541", "mp-2755", "mp-980", "mp-11454"}
records = [r for r in load_csv(sys.argv[1]) if r.material_id in ids]
cfg = TrainConfig(kind="dao-g", preset="tiny", out=sys.argv[2], max_steps=6, batch_size=3,
                  warmup=2, eval_every=10**9, save_every=10**9)
model = train(cfg, records, [])
params = torch.cat([p.detach().flatten() for p in model.parameters()])
torch.save(params, f"{sys.argv[2]}/rank{os.environ['RANK']}.pt")
"""


def test_ddp_two_cpu_processes_keep_identical_parameters(
    datasets_dir: Path, tmp_path: Path
) -> None:
    """torchrun, 2 processes, gloo: after 6 steps on disjoint shards both ranks hold the same
    weights, and those moved away from the (rank-0, broadcast) initialisation."""
    script = tmp_path / "ddp.py"
    script.write_text(DDP_SCRIPT)
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           str(script), str(datasets_dir / "mp_20_slice" / "train.csv"), str(out)]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rank0, rank1 = torch.load(out / "rank0.pt"), torch.load(out / "rank1.pt")
    assert torch.equal(rank0, rank1)
    torch.manual_seed(0)
    state = torch.load(out / "trainer_state.pt", weights_only=True)
    assert state["step"] == 6
    initial = load_model(out / "final", device="cpu")  # final == trained weights of rank 0
    trained = torch.cat([p.detach().flatten() for p in initial.parameters()])
    assert torch.equal(trained, rank0)


def test_descriptor_model_round_trips(tmp_path: Path) -> None:
    """A model with fixed element descriptors saves and loads its config and exact table."""
    torch.manual_seed(0)
    model = DAOModel("dao-g", CrysformerConfig.preset("tiny", "descriptors")).eval()
    save_model(model, tmp_path / "fp32")
    save_model(model, tmp_path / "fp16", dtype=torch.float16)
    args = (CrystalBatch(torch.tensor([[8, 22, 38, 8, 0]]), torch.rand(1, 5, 3),
                         4 * torch.eye(3)[None], torch.tensor([[True, True, True, True, False]])),
            torch.tensor([10]))  # fmt: skip
    loaded = load_model(tmp_path / "fp32", device="cpu")
    assert loaded.config.elements == "descriptors"
    with torch.no_grad():
        assert torch.equal(model(*args).coord, loaded(*args).coord)
    half = load_model(tmp_path / "fp16", device="cpu")
    assert torch.equal(half.net.element.table, model.net.element.table)  # fp16-exact table


def test_cli_preprocess_then_train_with_a_recorded_split(tmp_path: Path) -> None:
    """`dao preprocess` packs a CSV once; `dao train` reads the .npz, holding out split ids."""
    import pandas as pd
    from pymatgen.core import Lattice, Structure
    from typer.testing import CliRunner

    from dao_core.data import save_split
    from dao_flows.cli import app

    cells = [Structure(Lattice.cubic(a), ["Na", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]])
             for a in (3.0, 3.1, 3.2, 3.3)]  # fmt: skip
    csv = tmp_path / "toy.csv"
    frame = {"material_id": [f"t-{i}" for i in range(4)],
             "cif": [c.to(fmt="cif") for c in cells], "e": [0.1, 0.2, 0.3, 0.4]}  # fmt: skip
    pd.DataFrame(frame).to_csv(csv)
    runner = CliRunner()
    packed = tmp_path / "toy.npz"
    result = runner.invoke(app, ["preprocess", f"{csv}:e", "--out", str(packed)])
    assert result.exit_code == 0, result.output
    assert "4 structures" in result.output
    split = save_split(tmp_path / "split.json", None, ["t-3"], 0, [str(csv)])
    out = tmp_path / "run"
    args = ["train", "--model", "dao-p", "--preset", "tiny", "--data", str(packed),
            "--split", str(split), "--steps", "2", "--batch-size", "2", "--warmup", "1",
            "--out", str(out)]  # fmt: skip
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "3 training / 1 validation" in result.output
    config = json.loads((out / "final" / "config.json").read_text())
    assert config["energy_label"]["name"] == "e"  # the label stored at preprocessing
    bad = runner.invoke(app, ["preprocess", str(csv), "--out", str(tmp_path / "x.csv")])
    assert bad.exit_code != 0 and ".npz" in bad.output


def test_evaluate_leaves_the_training_random_stream_alone(handful: list) -> None:
    """Validation draws seeded noise inside a forked RNG: training resumes its own stream (not
    the validation seed's), and validation itself is reproducible."""
    torch.manual_seed(0)
    model = DAOModel("dao-g", CrysformerConfig.preset("tiny"))
    torch.manual_seed(7)
    undisturbed = torch.rand(8)
    torch.manual_seed(7)
    first = evaluate(model, handful, 2, seed=0, max_pairs=4096)
    after = torch.rand(8)
    torch.manual_seed(0)
    reset = torch.rand(8)
    assert torch.equal(after, undisturbed) and not torch.equal(after, reset)
    assert evaluate(model, handful, 2, seed=0, max_pairs=4096) == first
    assert set(first) == {"lattice", "coord", "total"} and model.training


def _old_energy_loss(model: DAOModel, batch: CrystalBatch) -> torch.Tensor:
    """The previous boolean-indexing DAO-P energy loss, at the noise ``model.loss`` draws."""
    noised = add_noise(model.schedule, batch.frac, batch.lattice, batch.mask)
    out = model(replace(batch, frac=noised.frac, lattice=noised.lattice), noised.t)
    target = (batch.energy - model.label.mean) / model.label.std
    known = torch.isfinite(target)
    pred, target = out.energy[known], target[known]
    if model.label.loss == "exp":
        return F.mse_loss(torch.exp(-pred), torch.exp(-target))
    return F.mse_loss(pred, target)


@pytest.mark.parametrize("kind", ["mse", "exp"])
def test_dao_p_energy_loss_masks_unlabelled_records(handful: list, kind: str) -> None:
    torch.manual_seed(0)
    label = EnergyLabel(mean=-0.5, std=0.7, loss=kind)  # type: ignore[arg-type]
    model = DAOModel("dao-p", CrysformerConfig.preset("tiny"), label)
    energies = [-1.2, None, 0.4, float("nan"), -0.3]
    mixed = CrystalBatch.from_records(
        [replace(handful[i % 3], energy=e) for i, e in enumerate(energies)]
    )
    torch.manual_seed(1)
    new = model.loss(mixed)["energy"]
    torch.manual_seed(1)
    old = _old_energy_loss(model, mixed)
    assert new.item() > 0 and abs(new.item() - old.item()) < 1e-6
    # No label in the batch at all: zero, finite, and the energy head still gets (zero) grads.
    for energy in (None, float("nan")):
        blank = CrystalBatch.from_records([replace(r, energy=energy) for r in handful])
        losses = model.loss(blank)
        assert losses["energy"].item() == 0.0 and torch.isfinite(losses["total"])
        model.zero_grad(set_to_none=True)
        losses["total"].backward()
        grads = [p.grad for p in model.net.parameters()]
        assert all(g is not None and torch.isfinite(g).all() for g in grads)


def test_csvs_without_material_ids_do_not_collide_in_a_split(tmp_path: Path) -> None:
    """Default ids are ``<file stem>-<row>``: two id-less files hold out their own rows."""
    import pandas as pd
    from pymatgen.core import Lattice, Structure

    datasets = {}
    for name, n in (("a", 4), ("b", 6)):
        cells = [Structure(Lattice.cubic(3.0 + 0.1 * i), ["Na", "Cl"],
                           [[0, 0, 0], [0.5, 0.5, 0.5]]) for i in range(n)]  # fmt: skip
        pd.DataFrame({"cif": [c.to(fmt="cif") for c in cells]}).to_csv(tmp_path / f"{name}.csv")
        datasets[name] = load_csv(tmp_path / f"{name}.csv", cache_dir="")
        assert [r.material_id for r in datasets[name]] == [f"{name}-{i}" for i in range(n)]
    train_sets, val_sets, _ = split_datasets(datasets, tmp_path, val_fraction=0.5, seed=0)
    for name, n in (("a", 4), ("b", 6)):
        val_idx = split_records(n, 0.5, 0)[1]
        assert [r.material_id for r in val_sets[name]] == [f"{name}-{i}" for i in val_idx]
        assert len(train_sets[name]) == n - len(val_idx)
