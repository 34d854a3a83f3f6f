"""Fine-tuning property models (``dao_core.properties``) with k-fold cross-validation.

- Case-study compositions (the paper's superconductors) are removed from any training data.
- Folds are seeded, grouped by reduced formula (polymorphs and repeated entries of one
  composition never sit on both sides of a split) and recorded by material id.
- ``frozen``: the backbone's pooled features are computed once, then each fold's head trains
  on them (seconds on a CPU). ``full``: backbone and head train together per fold (GPU).
- Each member stops at its best epoch on an inner validation tenth of its training folds, so
  the held-out fold is never used to choose anything.
"""

from __future__ import annotations

import copy
import json
import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from pymatgen.core import Composition, Element

from dao_core.dao import DAOModel
from dao_core.data import CrystalBatch, CrystalRecord, bucketed_batches
from dao_core.data.compositions import reduced_formula
from dao_core.errors import DAOInputError
from dao_core.properties import PropertyModel, PropertySpec, features, pooled

log = logging.getLogger(__name__)

# The paper's case studies (../shared/cases) and close relatives: evaluation only, never trained on.
CASE_FORMULAS = frozenset({"CsV3Sb5", "KV3Sb5", "RbV3Sb5", "Zr4Rh2O", "Zr4Pd2O", "Cr3Os"})


def is_case_composition(formula: str) -> bool:
    """A case-study composition, or any AV3Sb5 with A an alkali metal (the kagome family)."""
    comp = Composition(formula).reduced_composition
    if comp.reduced_formula in CASE_FORMULAS:
        return True
    amounts = {el.symbol: amt for el, amt in comp.items()}
    others = set(amounts) - {"V", "Sb"}
    if len(amounts) != 3 or len(others) != 1:
        return False
    alkali = others.pop()
    return Element(alkali).is_alkali and (amounts[alkali], amounts["V"], amounts["Sb"]) == (1, 3, 5)


def exclude_cases(records: Sequence[CrystalRecord]) -> tuple[list[CrystalRecord], list[str]]:
    """Records without the case-study compositions, and the removed ids (logged)."""
    kept, removed = [], []
    for r in records:
        (removed if is_case_composition(reduced_formula(r.atomic_numbers)) else kept).append(r)
    log.info(
        "case-study filter: removed %d of %d structures %s",
        len(removed),
        len(records),
        [r.material_id for r in removed[:10]],
    )
    return kept, [r.material_id for r in removed]


def assign_folds(ids: Sequence[str], groups: Sequence[str], k: int, seed: int) -> dict[str, int]:
    """Material id -> fold in 0..k-1; every group in one fold, fold sizes balanced.

    Groups are shuffled (seeded) and then placed largest first into the currently smallest
    fold, so the folds differ in size by at most the largest group.
    """
    if k < 2:
        raise DAOInputError(f"cross-validation needs at least 2 folds, got {k}")
    members: dict[str, list[str]] = {}
    for mid, group in zip(ids, groups, strict=True):
        members.setdefault(group, []).append(mid)
    if len(members) < k:
        raise DAOInputError(f"{len(members)} groups cannot fill {k} folds")
    names = list(members)
    order = np.random.default_rng(seed).permutation(len(names))
    order = sorted(order, key=lambda i: -len(members[names[i]]))  # stable: ties stay shuffled
    sizes = [0] * k
    folds: dict[str, int] = {}
    for i in order:
        fold = int(np.argmin(sizes))
        for mid in members[names[i]]:
            folds[mid] = fold
        sizes[fold] += len(members[names[i]])
    return folds


def save_folds(path: str | Path, folds: dict[str, int], meta: dict[str, Any]) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    k = max(folds.values()) + 1
    doc = {
        **meta,
        "k": k,
        "folds": [sorted(m for m, f in folds.items() if f == i) for i in range(k)],
    }
    path.write_text(json.dumps(doc, indent=1) + "\n")
    return path


def load_folds(path: str | Path) -> dict[str, int]:
    doc = json.loads(Path(path).read_text())
    return {mid: i for i, ids in enumerate(doc["folds"]) for mid in ids}


@dataclass
class FinetuneConfig:
    folds: int = 5
    seed: int = 0
    mode: str = "frozen"  # or "full": the backbone trains too
    width: int = 256
    epochs: int = 400  # head epochs (frozen) / network epochs (full)
    lr: float = 1e-3  # head
    backbone_lr: float = 2e-5  # full mode (the authors' fine-tuning rate)
    weight_decay: float = 1e-4
    batch_size: int = 128
    inner_val: float = 0.1
    patience: int = 60  # epochs without inner-validation improvement before stopping


def metrics(y: np.ndarray, pred: np.ndarray) -> dict[str, float]:
    err = pred - y
    ss_tot = float(((y - y.mean()) ** 2).sum())
    return {
        "n": len(y),
        "mae": float(np.abs(err).mean()),
        "rmse": float(np.sqrt((err**2).mean())),
        "r2": 1.0 - float((err**2).sum()) / ss_tot if ss_tot > 0 else float("nan"),
    }


def _inner_split(n: int, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(train, inner validation) rows; ``fraction=0`` keeps every row for training."""
    perm = np.random.default_rng(seed).permutation(n)
    n_val = max(1, int(round(n * fraction))) if fraction > 0 else 0
    return perm[n_val:], perm[:n_val]


def _cosine(opt: torch.optim.Optimizer, epochs: int) -> torch.optim.lr_scheduler.LRScheduler:
    return torch.optim.lr_scheduler.LambdaLR(
        opt, lambda e: 0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * min(e / epochs, 1.0)))
    )


class _BestState:
    """The modules' state at their lowest selection loss (inner-validation L1, or the epoch's
    training L1 without an inner split), and whether ``patience`` epochs passed without one."""

    def __init__(self, modules: Sequence[torch.nn.Module], patience: int) -> None:
        self.modules, self.patience = modules, patience
        self.best, self.since, self.epochs = math.inf, 0, 0
        self.state = [copy.deepcopy(m.state_dict()) for m in modules]

    def update(self, loss: float) -> bool:
        """Record one epoch; True when training should stop."""
        self.epochs += 1
        if loss < self.best:
            self.best, self.since = loss, 0
            self.state = [copy.deepcopy(m.state_dict()) for m in self.modules]
        else:
            self.since += 1
        return self.since >= self.patience

    def restore(self) -> dict[str, float]:
        for m, state in zip(self.modules, self.state, strict=True):
            m.load_state_dict(state)
        return {"selection_l1": self.best, "epochs": self.epochs}


def fit_head(
    model: PropertyModel,
    member: int,
    x: torch.Tensor,
    y: torch.Tensor,
    cfg: FinetuneConfig,
    seed: int,
) -> dict[str, float]:
    """Train head ``member`` on precomputed features; keeps its best inner-validation state."""
    head = model.heads[member]
    train, val = _inner_split(len(y), cfg.inner_val, seed)
    head.set_statistics(x[train], y[train])  # type: ignore[operator]
    torch.manual_seed(seed)
    opt = torch.optim.AdamW(head.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    sched = _cosine(opt, cfg.epochs)
    rng = np.random.default_rng(seed)
    target = (y - head.y_mean) / head.y_std  # type: ignore[operator]
    keeper = _BestState([head], cfg.patience)
    for _ in range(cfg.epochs):
        head.train()
        losses = []
        for idx in torch.from_numpy(rng.permutation(train)).split(cfg.batch_size):
            loss = F.l1_loss(head.standardised(x[idx]), target[idx])  # type: ignore[operator]
            opt.zero_grad()
            loss.backward()
            opt.step()
            losses.append(loss.item())
        sched.step()
        head.eval()
        with torch.no_grad():
            pred = head.standardised(x[val])  # type: ignore[operator]
        if keeper.update(float(F.l1_loss(pred, target[val])) if len(val) else np.mean(losses)):
            break
    return keeper.restore()


def fit_full(
    model: PropertyModel,
    member: int,
    records: Sequence[CrystalRecord],
    y: torch.Tensor,
    cfg: FinetuneConfig,
    seed: int,
    device: torch.device,
) -> dict[str, float]:
    """Train backbone ``member`` and its head together (L1 on the standardised target)."""
    net, head = model.backbone(member), model.heads[member]
    train, val = _inner_split(len(y), cfg.inner_val, seed)
    head.set_statistics(features(net, records, device=device)[train], y[train])  # type: ignore[operator]
    target = ((y - head.y_mean.cpu()) / head.y_std.cpu()).to(device)  # type: ignore[operator]
    opt = torch.optim.AdamW(
        [
            {"params": net.parameters(), "lr": cfg.backbone_lr},
            {"params": head.parameters(), "lr": cfg.lr},
        ],
        weight_decay=cfg.weight_decay,
    )
    sched = _cosine(opt, cfg.epochs)
    train_records = [records[i] for i in train]
    keeper = _BestState([net, head], cfg.patience)
    for epoch in range(cfg.epochs):
        net.train()
        loss_sum, batches = torch.zeros((), device=device), 0  # on the device: one read per epoch
        for idx in bucketed_batches(train_records, cfg.batch_size, seed + epoch):
            batch = CrystalBatch.from_records([train_records[i] for i in idx])
            batch = batch.to(device, non_blocking=True)
            rows = torch.from_numpy(train[idx]).to(device, non_blocking=True)
            loss = F.l1_loss(head.standardised(pooled(net, batch)), target[rows])  # type: ignore[operator,arg-type]
            opt.zero_grad()
            loss.backward()
            opt.step()
            loss_sum += loss.detach()
            batches += 1
        sched.step()
        net.eval()
        selection = float(loss_sum) / max(batches, 1)
        if len(val):
            with torch.no_grad():
                f = features(net, [records[i] for i in val], device=device).to(device)
                pred = head.standardised(f)  # type: ignore[operator]
            selection = float(F.l1_loss(pred, target[torch.from_numpy(val).to(device)]))
        log.info("member %d epoch %d: selection L1 %.4f", member, epoch, selection)
        if keeper.update(selection):
            break
    return keeper.restore()


def cross_validate(
    dao_p: DAOModel,
    records: Sequence[CrystalRecord],
    spec: PropertySpec,
    folds: dict[str, int],
    cfg: FinetuneConfig,
    report: Callable[[str], None] = log.info,
    extra: Sequence[CrystalRecord] = (),
) -> tuple[PropertyModel, dict[str, Any]]:
    """Train one member per fold (on the other folds) and score it on its own fold.

    ``extra`` records (e.g. generated structures) join every member's training set and are
    never scored, so the metrics stay those of the measured structures.

    Returns the ensemble and a report: per-fold and overall (out-of-fold) MAE / RMSE / R² on
    the transformed target and in physical units, plus every out-of-fold prediction.
    """
    device = dao_p.device
    k = max(folds.values()) + 1
    model = PropertyModel(spec, dao_p.config, k, cfg.width, shared_backbone=cfg.mode == "frozen")
    for net in model.backbones:
        net.load_state_dict(dao_p.net.state_dict())
    model.backbone_ref = {"name": dao_p.name, "sha256": dao_p.content_hash}
    model.to(device)
    n = len(records)
    records = [*records, *extra]
    y_all = np.array([r.energy for r in records], dtype=np.float64)
    y, y_phys = torch.tensor(spec.forward(y_all), dtype=torch.float32), y_all[:n]
    fold_of = np.array([folds[r.material_id] for r in records[:n]] + [-1] * len(extra))
    x = features(model.backbone(0), records, device=device) if cfg.mode == "frozen" else None
    oof = np.zeros(n)
    per_fold = []
    for member in range(k):
        train = np.flatnonzero(fold_of != member)
        test = np.flatnonzero(fold_of == member)
        seed = cfg.seed * 1000 + member
        if x is not None:
            info = fit_head(model, member, x[train], y[train], cfg, seed)
            with torch.no_grad():
                oof[test] = model.heads[member](x[test].to(device)).double().cpu().numpy()
        else:
            info = fit_full(model, member, [records[i] for i in train], y[train], cfg, seed, device)
            net = model.backbone(member).eval()
            with torch.no_grad():
                f = features(net, [records[i] for i in test], device=device).to(device)
                oof[test] = model.heads[member](f).double().cpu().numpy()
        row = {
            "fold": member,
            "n_train": len(train),
            **info,
            "target": metrics(y.numpy()[test].astype(np.float64), oof[test]),
            "physical": metrics(y_phys[test], spec.inverse(oof[test])),
        }
        per_fold.append(row)
        report(
            f"fold {member}: n={len(test)}  MAE {row['physical']['mae']:.3f} {spec.unit}  "
            f"MAE({spec.transform}) {row['target']['mae']:.3f}  R² {row['target']['r2']:.3f}  "
            f"({info['epochs']} epochs)"
        )
    overall = {
        "target": metrics(y.numpy()[:n].astype(np.float64), oof),
        "physical": metrics(y_phys, spec.inverse(oof)),
    }
    report(
        f"overall (out-of-fold, n={n}): MAE {overall['physical']['mae']:.3f} "
        f"{spec.unit}  MAE({spec.transform}) {overall['target']['mae']:.3f}  "
        f"R² {overall['target']['r2']:.3f}  R²(physical) {overall['physical']['r2']:.3f}"
    )
    predictions = [
        {
            "material_id": r.material_id,
            "fold": int(fold_of[i]),
            "y": float(y_phys[i]),
            "pred": float(spec.inverse(oof[i])),
            "pred_target": float(oof[i]),
        }
        for i, r in enumerate(records[:n])
    ]
    return model.eval(), {"folds": per_fold, "overall": overall, "predictions": predictions}
