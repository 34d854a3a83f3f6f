"""Energy MAE of DAO-P per data set on the held-out structures, next to CHGNet and a mean baseline.

    python benchmarks/energy_mae.py --datasets ../shared/datasets \
        --split docs/data/split-seed0.json --max-fit 600 --json energy_mae.json

For each data set DAO-P was trained on (MP-20 slice ``e_above_hull``, perov-5 ``heat_all``,
carbon-24 ``energy_per_atom``), the evaluation structures are those whose material id is in the
split's ``val`` list, plus the MP-20 slice's own ``val.csv`` (never trained on). Columns:

* baseline: predict the mean label of the training structures (those not held out);
* DAO-P: ``mean_d + std_d * prediction`` at the clean step, ``d`` the data set's statistics
  stored in the checkpoint (``energy_label.per_dataset``);
* CHGNet: its absolute energy per atom (MP-compatible) mapped to the data set's label by a
  composition-linear reference fitted on at most ``--max-fit`` training structures:
  (A, headline) ``label - E_CHGNet = c + sum_el x_el mu_el`` (per-element references, slope 1),
  (B) ``label = c + sum_el x_el mu_el + b E_CHGNet`` (slope fitted too); ``x_el`` is the atomic
  fraction, and a tiny ridge term keeps elements absent from the fit sample at ``mu = 0``;
* context: the same composition-linear fit without any model (``label = c + sum x mu``), and
  DAO-P's MAE on the calibration sample (structures it was trained on).

MAEs are given ± their standard error (std of |error| / sqrt(n)). Two CHGNet-only checks follow
the tables: the calibration on MP-20 ``formation_energy_per_atom`` (composition-linear by
construction), and carbon-24 against CHGNet's enthalpy ``E + P V`` at 10 GPa.

DAO-P's own split is rebuilt (``split_records(n, 0.1, seed)`` per training file, as ``dao train``
draws it) and checked against the checkpoint's per-data-set counts and means; held-out
structures that DAO-P did train on (the recorded split is DAO-G's, which also holds out ids shared
with 3DSC) are left out of every column and counted in the ``leaked`` column.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import sys
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from ase import units
from rich.console import Console
from rich.table import Table

from dao_core.checkpoint import load_model
from dao_core.dao import DAOModel
from dao_core.data import CrystalBatch, CrystalRecord, load_csv, load_split, split_records

RIDGE = 1e-6  # ridge weight per element: numerical safety only, not shrinkage
VAL_FRACTION = 0.1  # what `dao train` uses when it draws the split itself


@dataclass
class Case:
    """One table row: evaluate ``eval_file`` (held-out rows only unless ``all_rows``)."""

    name: str
    train_file: str  # relative to --datasets; also the key of the checkpoint's statistics
    label: str
    eval_file: str
    all_rows: bool = False
    pressure_gpa: float = 0.0  # compare labels with CHGNet's enthalpy E + P·V (per atom)


CASES = [
    Case(
        "mp_20_slice (held out)", "mp_20_slice/train.csv", "e_above_hull", "mp_20_slice/train.csv"
    ),
    Case(
        "mp_20_slice val.csv", "mp_20_slice/train.csv", "e_above_hull", "mp_20_slice/val.csv", True
    ),
    Case("perov_5 (held out)", "perov_5/val.csv", "heat_all", "perov_5/val.csv"),
    Case("carbon_24 (held out)", "carbon_24/val.csv", "energy_per_atom", "carbon_24/val.csv"),
]
# CHGNet-only checks: the calibration on a composition-linear label (formation energy), and
# carbon-24 with CHGNet's enthalpy at 10 GPa (the pressure of the AIRSS search behind carbon-24).
CHECKS = [
    Case(
        "mp_20_slice val.csv", "mp_20_slice/train.csv", "formation_energy_per_atom",
        "mp_20_slice/val.csv", True,
    ),
    Case(
        "carbon_24 (held out), CHGNet E + 10 GPa·V", "carbon_24/val.csv", "energy_per_atom",
        "carbon_24/val.csv", pressure_gpa=10.0,
    ),
]  # fmt: skip


@dataclass
class Row:
    name: str
    label: str
    n_eval: int
    leaked: int
    n_fit: int
    train_mean: float
    train_std: float
    mae_baseline: float
    mae_dao: float | None = None
    mae_dao_fit: float | None = None  # DAO-P on the (training) fit sample
    mae_chgnet_a: float | None = None
    mae_chgnet_b: float | None = None
    mae_composition: float | None = None  # label ≈ c + sum x_el mu_el, no model at all
    se: dict[str, float] = field(default_factory=dict)  # standard errors of the MAEs
    slope_b: float | None = None
    unseen_elements: int = 0  # evaluation structures with an element absent from the fit sample
    extra: dict[str, Any] = field(default_factory=dict)


# --- models --------------------------------------------------------------------------------------


def stats_for(model: DAOModel, train_file: str) -> dict[str, float]:
    """The checkpoint's statistics for ``train_file`` (its keys are paths: match the end)."""
    for key, stats in model.label.per_dataset.items():
        if key.replace("\\", "/").endswith(train_file):
            return stats
    raise KeyError(f"{model.name} has no per-data-set statistics for {train_file}")


@torch.no_grad()
def dao_predict(model: DAOModel, records: list[CrystalRecord], batch_size: int = 128) -> np.ndarray:
    """Standardised DAO-P energies at the clean step (batches sorted by size to pad little)."""
    order = np.argsort([r.num_atoms for r in records], kind="stable")
    out = np.empty(len(records))
    for start in range(0, len(order), batch_size):
        idx = order[start : start + batch_size]
        b = CrystalBatch.from_records([records[i] for i in idx]).to(model.device)
        out[idx] = model.energy(b).float().cpu().numpy()
    return out


class ChgnetCache:
    """CHGNet energies per atom (energy task only), memoised by (file, material id)."""

    def __init__(self) -> None:
        from chgnet.model import CHGNet

        self.model = CHGNet.load(verbose=False)
        self.energies: dict[tuple[str, str], float] = {}
        self.seconds = 0.0
        self.computed = 0

    def __call__(self, file: str, records: list[CrystalRecord]) -> np.ndarray:
        todo = [r for r in records if (file, r.material_id) not in self.energies]
        if todo:
            started = time.perf_counter()
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                preds = self.model.predict_structure(
                    [r.to_structure() for r in todo], task="e", batch_size=32
                )
            for r, p in zip(todo, preds, strict=True):
                self.energies[(file, r.material_id)] = float(p["e"])
            self.seconds += time.perf_counter() - started
            self.computed += len(todo)
        return np.array([self.energies[(file, r.material_id)] for r in records])


# --- calibration ---------------------------------------------------------------------------------


def fractions(records: list[CrystalRecord], elements: list[int]) -> np.ndarray:
    col = {z: i for i, z in enumerate(elements)}
    x = np.zeros((len(records), len(elements)))
    for row, r in enumerate(records):
        zs, counts = np.unique(r.atomic_numbers, return_counts=True)
        for z, c in zip(zs, counts, strict=True):
            if int(z) in col:
                x[row, col[int(z)]] = c / r.num_atoms
    return x


def volumes(records: list[CrystalRecord]) -> np.ndarray:
    """Volume per atom (Å³)."""
    return np.array(
        [abs(np.linalg.det(r.lattice.astype(np.float64))) / r.num_atoms for r in records]
    )


def fit_reference(
    x: np.ndarray, target: np.ndarray, energy: np.ndarray | None
) -> tuple[np.ndarray, float | None]:
    """Least squares ``target ≈ c + x·mu (+ b·energy)`` with a ridge term on ``mu`` only.

    Returns the coefficients [c, mu..., (b)] and the slope b (None when not fitted).
    """
    cols = [np.ones((len(x), 1)), x] + ([energy[:, None]] if energy is not None else [])
    design = np.hstack(cols)
    penalty = np.zeros((x.shape[1], design.shape[1]))
    penalty[:, 1 : 1 + x.shape[1]] = np.sqrt(RIDGE) * np.eye(x.shape[1])
    coef, *_ = np.linalg.lstsq(
        np.vstack([design, penalty]), np.concatenate([target, np.zeros(x.shape[1])]), rcond=None
    )
    return coef, (float(coef[-1]) if energy is not None else None)


def apply_reference(coef: np.ndarray, x: np.ndarray, energy: np.ndarray | None) -> np.ndarray:
    cols = [np.ones((len(x), 1)), x] + ([energy[:, None]] if energy is not None else [])
    return np.hstack(cols) @ coef


# --- evaluation ----------------------------------------------------------------------------------


def rebuild_training_ids(records: list[CrystalRecord], seed: int, stats: dict[str, float]) -> set:
    """Material ids DAO-P trained on for this file, checked against the checkpoint's statistics."""
    train_idx, _ = split_records(len(records), VAL_FRACTION, seed)
    labels = np.array([records[i].energy for i in train_idx], dtype=float)
    ok = len(train_idx) == int(stats["count"]) and abs(labels.mean() - stats["mean"]) < 1e-6
    if not ok:
        raise SystemExit(
            f"cannot rebuild DAO-P's training split: {len(train_idx)} records, mean "
            f"{labels.mean():.6g} vs checkpoint count {stats['count']}, mean {stats['mean']:.6g}"
        )
    return {records[i].material_id for i in train_idx}


def evaluate(
    case: Case,
    root: Path,
    held_out: set[str],
    model: DAOModel | None,
    chgnet: ChgnetCache | None,
    max_fit: int,
    seed: int,
    dao_seed: int,
) -> Row:
    train_all = load_csv(root / case.train_file, case.label)
    training = [r for r in train_all if r.material_id not in held_out]
    if case.all_rows:
        evaluation = load_csv(root / case.eval_file, case.label)
    else:
        evaluation = [r for r in train_all if r.material_id in held_out]
    leaked = 0
    if model is not None:
        stats = stats_for(model, case.train_file)
        dao_train_ids = rebuild_training_ids(train_all, dao_seed, stats)
        if not case.all_rows:  # val.csv is a different file: DAO-P never saw it
            keep = [r for r in evaluation if r.material_id not in dao_train_ids]
            leaked = len(evaluation) - len(keep)
            evaluation = keep
    y_train = np.array([r.energy for r in training])
    y = np.array([r.energy for r in evaluation])
    rng = np.random.default_rng(seed)
    fit_idx = np.sort(rng.permutation(len(training))[: min(max_fit, len(training))])
    fit = [training[i] for i in fit_idx]
    y_fit = y_train[fit_idx]
    row = Row(
        case.name, case.label, len(evaluation), leaked, len(fit),
        float(y_train.mean()), float(y_train.std()), 0.0,
    )  # fmt: skip

    def score(key: str, pred: np.ndarray, truth: np.ndarray = y) -> float:
        err = np.abs(pred - truth)
        row.se[key] = float(err.std(ddof=1) / np.sqrt(len(err)))
        return float(err.mean())

    row.mae_baseline = score("baseline", np.full(len(y), y_train.mean()))
    elements = sorted({int(z) for r in fit for z in r.atomic_numbers})
    x_fit, x_eval = fractions(fit, elements), fractions(evaluation, elements)
    row.unseen_elements = sum(
        bool(set(r.atomic_numbers.tolist()) - set(elements)) for r in evaluation
    )
    coef_c, _ = fit_reference(x_fit, y_fit, None)
    row.mae_composition = score("composition", apply_reference(coef_c, x_eval, None))
    row.extra["n_elements_fit"] = len(elements)
    if model is not None:
        stats = stats_for(model, case.train_file)
        to_label = lambda p: stats["mean"] + stats["std"] * p  # noqa: E731
        row.mae_dao = score("dao", to_label(dao_predict(model, evaluation)))
        row.mae_dao_fit = score("dao_fit", to_label(dao_predict(model, fit)), y_fit)
    if chgnet is not None:
        e_fit = chgnet(case.train_file, fit) + case.pressure_gpa * units.GPa * volumes(fit)
        e_eval = chgnet(case.eval_file, evaluation) + (
            case.pressure_gpa * units.GPa * volumes(evaluation)
        )
        coef_a, _ = fit_reference(x_fit, y_fit - e_fit, None)
        row.mae_chgnet_a = score("chgnet_a", apply_reference(coef_a, x_eval, None) + e_eval)
        coef_b, row.slope_b = fit_reference(x_fit, y_fit, e_fit)
        row.mae_chgnet_b = score("chgnet_b", apply_reference(coef_b, x_eval, e_eval))
        row.extra["chgnet_fit_mae_a"] = float(
            np.abs(apply_reference(coef_a, x_fit, None) + e_fit - y_fit).mean()
        )
    return row


def fmt(v: float | None, digits: int = 4) -> str:
    return "—" if v is None else f"{v:.{digits}f}"


def fmt_se(row: Row, key: str, v: float | None) -> str:
    return "—" if v is None else f"{v:.4f} ± {row.se[key]:.4f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--datasets", default=os.environ.get("DAO_DATASETS", "/work/shared/datasets"),
        help="folder with mp_20_slice/, perov_5/, carbon_24/ (default $DAO_DATASETS)",
    )  # fmt: skip
    parser.add_argument("--split", default="docs/data/split-seed0.json")
    parser.add_argument("--model", default="dao-p-base")
    parser.add_argument("--max-fit", type=int, default=600, help="CHGNet calibration structures")
    parser.add_argument("--seed", type=int, default=0, help="seed of the calibration sample")
    parser.add_argument("--dao-seed", type=int, default=0, help="seed of DAO-P's own split")
    parser.add_argument("--no-chgnet", action="store_true")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--json", default=None, help="write the results here")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    if args.threads:
        torch.set_num_threads(args.threads)

    root = Path(args.datasets)
    held_out = set(load_split(args.split)["val"])
    model = load_model(args.model, device="cpu")
    chgnet = None if args.no_chgnet else ChgnetCache()
    started = time.perf_counter()
    rows = [
        evaluate(c, root, held_out, model, chgnet, args.max_fit, args.seed, args.dao_seed)
        for c in CASES
    ]
    checks = [
        evaluate(c, root, held_out, None, chgnet, args.max_fit, args.seed, args.dao_seed)
        for c in (CHECKS if chgnet is not None else [])
    ]
    wall = time.perf_counter() - started

    table = Table(title=f"Energy MAE ± s.e. on held-out structures ({args.model} vs CHGNet)")
    for col in ("data set", "label", "n val", "leaked", "baseline MAE", "DAO-P MAE",
                "CHGNet MAE (A, headline)", "CHGNet MAE (B)", "units"):  # fmt: skip
        table.add_column(col, justify="left" if col in ("data set", "label", "units") else "right")
    for r in rows:
        table.add_row(
            r.name, r.label, str(r.n_eval), str(r.leaked),
            fmt_se(r, "baseline", r.mae_baseline), fmt_se(r, "dao", r.mae_dao),
            fmt_se(r, "chgnet_a", r.mae_chgnet_a), fmt_se(r, "chgnet_b", r.mae_chgnet_b), "eV/atom",
        )  # fmt: skip
    console = Console(width=None if sys.stdout.isatty() else 200)
    console.print(table)

    detail = Table(title="Context")
    for col in ("data set", "train mean", "train std", "composition-only MAE",
                "DAO-P MAE on fit sample (trained on)", "n fit", "CHGNet slope b (B)",
                "val with unseen elements"):  # fmt: skip
        detail.add_column(col, justify="left" if col == "data set" else "right")
    for r in rows:
        detail.add_row(
            r.name, fmt(r.train_mean), fmt(r.train_std),
            fmt_se(r, "composition", r.mae_composition), fmt(r.mae_dao_fit), str(r.n_fit),
            fmt(r.slope_b, 3), str(r.unseen_elements),
        )  # fmt: skip
    console.print(detail)
    for check in checks:
        console.print(
            f"CHGNet check, {check.name} {check.label} (n={check.n_eval}): "
            f"baseline {fmt_se(check, 'baseline', check.mae_baseline)}, "
            f"composition-only {fmt_se(check, 'composition', check.mae_composition)}, "
            f"CHGNet (A) {fmt_se(check, 'chgnet_a', check.mae_chgnet_a)}, "
            f"(B) {fmt_se(check, 'chgnet_b', check.mae_chgnet_b)} eV/atom"
        )
    if chgnet is not None:
        console.print(
            f"CHGNet: {chgnet.computed} structures in {chgnet.seconds:.0f} s "
            f"({chgnet.computed / max(chgnet.seconds, 1e-9):.1f}/s); total {wall:.0f} s"
        )

    if args.json:
        doc = {
            "model": args.model,
            "model_sha256": model.content_hash,
            "split": args.split,
            "max_fit": args.max_fit,
            "seed": args.seed,
            "rows": [r.__dict__ for r in rows],
            "chgnet_checks": [c.__dict__ for c in checks],
            "wall_s": round(wall, 1),
            "torch_threads": torch.get_num_threads(),
            "machine": platform.machine(),
        }
        Path(args.json).write_text(json.dumps(doc, indent=2) + "\n")


if __name__ == "__main__":
    main()
