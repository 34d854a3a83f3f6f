"""Property commands: finetune-property (DAO-P heads with k-fold CV) and predict."""

from __future__ import annotations

import datetime
import json
import logging
import platform
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from dao_flows.cli import app
from dao_flows.cli.flows import input_errors_exit

console = Console()


def _hardware(device: str) -> str:
    import torch

    if device.startswith("cuda"):
        return torch.cuda.get_device_name(0)
    return f"CPU ({platform.processor() or platform.machine()}), {torch.get_num_threads()} threads"


@app.command("finetune-property")
@input_errors_exit
def finetune_property(
    data: Annotated[str, typer.Option(help="CSV:COLUMN (CDVAE layout: cif, material_id)")],
    out: Annotated[Path, typer.Option(help="folder to write: the property model, folds, CV")],
    init: Annotated[str, typer.Option(help="DAO-P backbone: checkpoint or bundled name")] = (
        "dao-p-base"
    ),
    transform: Annotated[str, typer.Option(help="identity | log1p (Tc: log(1 + Tc))")] = (
        "identity"
    ),
    unit: Annotated[str, typer.Option(help="unit of the column, for printing")] = "",
    mode: Annotated[str, typer.Option(help="frozen (heads on fixed features) | full")] = "frozen",
    folds: int = 5,
    seed: int = 0,
    group_by: Annotated[
        str, typer.Option(help="formula (one composition never on both sides) | id")
    ] = "formula",
    folds_file: Annotated[Path | None, typer.Option(help="reuse recorded folds (JSON)")] = None,
    drop_zero: Annotated[bool, typer.Option(help="leave out rows whose value is 0")] = False,
    augment: Annotated[
        str | None, typer.Option(help="CSV:COLUMN of extra (generated) training structures")
    ] = None,
    epochs: int = 400,
    lr: float = 3e-4,
    backbone_lr: float = 2e-5,
    width: int = 256,
    weight_decay: float = 1e-4,
    batch_size: int = 128,
    fp16: Annotated[bool, typer.Option(help="store weights as float16 (for shipping)")] = False,
    device: str | None = None,
) -> None:
    """Fine-tune a property head on DAO-P with k-fold cross-validation; prints MAE / R²."""
    import pandas as pd
    import torch

    from dao_core.checkpoint import file_hash, load_model
    from dao_core.data import load_csv
    from dao_core.errors import DAOInputError
    from dao_core.properties import PropertySpec, backbone_reference, save_property_model
    from dao_core.property_training import (
        FinetuneConfig,
        assign_folds,
        cross_validate,
        exclude_cases,
        load_folds,
        reduced_formula,
        save_folds,
    )  # fmt: skip

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    path, _, column = data.partition(":")
    if not column:
        raise typer.BadParameter("give the property column as CSV:COLUMN", param_hint="--data")
    if mode not in ("frozen", "full") or group_by not in ("formula", "id"):
        raise typer.BadParameter("--mode frozen|full, --group-by formula|id")
    spec = PropertySpec(column, unit, transform)
    records = load_csv(path, column)
    records, removed = exclude_cases(records)
    console.print(f"case-study compositions removed: {len(removed)} {removed[:10]}")
    if drop_zero:
        records = [r for r in records if r.energy != 0]
    if len({r.material_id for r in records}) != len(records):
        raise DAOInputError(f"{path}: material_id values repeat; folds are recorded by id")
    dao_p = load_model(init, device=device)
    dao_p.name = backbone_reference(init)
    ids = [r.material_id for r in records]
    if folds_file is not None:
        fold_of = load_folds(folds_file)
        records = [r for r in records if r.material_id in fold_of]
    else:
        groups = (
            [reduced_formula(r.atomic_numbers) for r in records] if group_by == "formula" else ids
        )
        fold_of = assign_folds(ids, groups, folds, seed)
    cfg = FinetuneConfig(
        folds=folds, seed=seed, mode=mode, width=width, epochs=epochs, lr=lr,
        backbone_lr=backbone_lr, weight_decay=weight_decay, batch_size=batch_size,
    )  # fmt: skip
    console.print(f"{len(records)} structures, {max(fold_of.values()) + 1} folds, "
                  f"backbone {dao_p.name} ({dao_p.content_hash[:12]}), {mode}")  # fmt: skip
    extra = []
    if augment:
        aug_path, _, aug_column = augment.partition(":")
        extra, aug_removed = exclude_cases(load_csv(aug_path, aug_column or column))
        extra = [r for r in extra if r.material_id not in fold_of]
        console.print(f"augmentation: {len(extra)} extra training structures from {aug_path} "
                      f"({len(aug_removed)} case-study compositions removed)")  # fmt: skip
    model, report = cross_validate(dao_p, records, spec, fold_of, cfg, console.print, extra)
    out.mkdir(parents=True, exist_ok=True)
    save_folds(out / "folds.json", fold_of, {"seed": seed, "group_by": group_by, "data": path})
    pd.DataFrame(report["predictions"]).to_csv(out / "cv_predictions.csv", index=False)
    cv = {k: report[k] for k in ("folds", "overall")}
    (out / "cv.json").write_text(json.dumps(cv, indent=2))
    model.record = {
        "data": [f"{path}:{column}"],
        "data_sha256": file_hash(Path(path)),
        "structures": len(records),
        "case_structures_removed": removed,
        "drop_zero": drop_zero,
        "augment": {"data": augment, "structures": len(extra)} if augment else None,
        "folds": {"file": "folds.json", "k": model.members, "seed": seed, "group_by": group_by},
        "finetune": vars(cfg),
        "cv": cv,
        "command": "dao " + " ".join(sys.argv[1:]) if Path(sys.argv[0]).name == "dao" else "",
        "date": datetime.date.today().isoformat(),
        "hardware": _hardware(str(dao_p.device)),
    }
    save_property_model(model, out, torch.float16 if fp16 else torch.float32)
    console.print(f"property model -> {out}")


def read_structures(paths: list[Path], primitive: bool) -> list[tuple[str, Any]]:
    """(label, pymatgen Structure) for CIF/POSCAR files and every row of CDVAE-layout CSVs."""
    import pandas as pd
    from pymatgen.core import Structure

    from dao_core.errors import DAOInputError

    out: list[tuple[str, Any]] = []
    for path in paths:
        try:
            if path.suffix.lower() == ".csv":
                frame = pd.read_csv(path)
                ids = frame.get("material_id", pd.Series(range(len(frame)))).astype(str)
                out += [(f"{path.name}:{i}", Structure.from_str(c, fmt="cif"))
                        for i, c in zip(ids, frame["cif"], strict=True)]  # fmt: skip
            else:
                out.append((path.name, Structure.from_file(path)))
        except (OSError, ValueError, KeyError) as exc:
            raise DAOInputError(f"cannot read a structure from {path}: {exc}") from exc
    # A supercell is not the same input to the network: predict on the primitive cell.
    return [(name, s.get_primitive_structure() if primitive else s) for name, s in out]


@app.command()
@input_errors_exit
def predict(
    structures: Annotated[list[Path], typer.Argument(help="CIF/POSCAR files or CSVs (cif column)")],
    model: Annotated[str, typer.Option(help="property model: bundled name or folder")] = "dao-p-tc",
    primitive: Annotated[
        bool, typer.Option(help="reduce each structure to its primitive cell first")
    ] = True,
    device: str | None = None,
    json_out: Annotated[Path | None, typer.Option("--json", help="write results here")] = None,
) -> None:
    """Predict a property: ensemble mean ± spread (standard deviation) over the fold members."""
    import numpy as np

    from dao_core.data import MAX_ATOMS, record_from_structure
    from dao_core.errors import DAOInputError
    from dao_core.properties import load_property_model

    ensemble = load_property_model(model, device=device)
    named = read_structures(structures, primitive)
    too_big = [n for n, s in named if len(s) > MAX_ATOMS]
    if too_big:
        raise DAOInputError(f"structures over {MAX_ATOMS} atoms (the backbone's limit): {too_big}")
    records = [record_from_structure(s, material_id=n) for n, s in named]
    values = ensemble.predict_records(records)
    spec = ensemble.spec
    table = Table("structure", "formula", "atoms", f"{spec.name} ({spec.unit or '-'})", "members")
    rows = []
    for (name, s), v in zip(named, values.T, strict=True):
        mean, spread = float(v.mean()), float(v.std())
        table.add_row(name, s.composition.reduced_formula, str(len(s)),
                      f"{mean:.2f} ± {spread:.2f}", " ".join(f"{x:.2f}" for x in v))  # fmt: skip
        rows.append({"structure": name, "formula": s.composition.reduced_formula,
                     "mean": mean, "std": spread, "members": v.tolist()})  # fmt: skip
    console.print(table)
    cv = ensemble.record.get("cv", {}).get("overall", {}).get("physical", {})
    if cv:
        console.print(f"model {model}: {ensemble.members} members; CV MAE "
                      f"{cv['mae']:.2f} {spec.unit} on its training data")  # fmt: skip
    if json_out:
        doc = {"model": model, "property": spec.name, "unit": spec.unit, "predictions": rows}
        json_out.write_text(json.dumps(doc, indent=2, default=np.asarray))
