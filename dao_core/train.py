"""One trainer for every DAO stage: DAO-G Stage I/II, DAO-P, and fine-tuning.

Adam with linear warm-up and cosine decay, gradient clipping by value, bf16 autocast on GPU,
checkpoint/resume (a run stopped by ``time_limit`` continues where it left off), and data
parallelism across processes started by ``torchrun`` (NCCL on GPU, gloo on CPU).
"""

from __future__ import annotations

import copy
import json
import logging
import math
import os
import random
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from dao_core.checkpoint import load_model, save_model
from dao_core.dao import DAOModel, EnergyLabel
from dao_core.data import (
    CrystalBatch,
    CrystalRecord,
    bucketed_batches,
    load_split,
    save_split,
    split_records,
)
from dao_core.diffusion import SamplerSettings
from dao_core.model import CrysformerConfig

log = logging.getLogger(__name__)
STATE_FILE = "trainer_state.pt"


@dataclass
class TrainConfig:
    kind: str = "dao-g"
    preset: str = "base"
    elements: str = "learned"  # or "descriptors" (dao_core.elements)
    out: str = "runs/dao-g"
    init: str | None = None  # start from these weights (Stage II, fine-tuning)
    max_steps: int = 10_000
    batch_size: int = 128  # per process
    lr: float = 5e-4
    warmup: int = 500
    min_lr_ratio: float = 0.02
    weight_decay: float = 0.0
    clip_value: float = 0.5
    seed: int = 0
    amp: bool = True  # bf16 autocast, GPU only
    energy_loss: str = "mse"
    label_name: str = "energy_per_atom"
    label_unit: str = "eV/atom"
    # label statistics (mean, std) per dataset, when standardised per set
    per_dataset: dict[str, dict[str, float]] = field(default_factory=dict)
    max_pairs: int | None = None  # B * Nmax^2 per batch (default 1M on GPU, 4096 on CPU)
    eval_every: int = 500
    save_every: int = 1000
    time_limit: float | None = None  # seconds; checkpoint and stop, to resume later
    time_budget: float | None = None  # seconds; the whole run, schedule included, ends by then
    ema_decay: float | None = None  # keep an exponential moving average of the weights: "final"
    record: dict[str, Any] = field(default_factory=dict)  # provenance written into the checkpoint
    # SamplerSettings fields to save with the model
    sampling: dict[str, float] = field(default_factory=dict)


class _Loss(nn.Module):
    """Makes the loss the module's forward, which DistributedDataParallel needs."""

    def __init__(self, model: DAOModel) -> None:
        super().__init__()
        self.model = model

    def forward(self, batch: CrystalBatch) -> dict[str, torch.Tensor]:
        return self.model.loss(batch)


class WeightAverage:
    """Exponential moving average of a model's parameters and buffers (Polyak averaging):
    one fused lerp per step and no host synchronisation, unlike ``AveragedModel``'s counter."""

    def __init__(self, model: DAOModel, decay: float) -> None:
        self.model = copy.deepcopy(model).eval().requires_grad_(False)
        self.decay = decay
        own = [*self.model.parameters(), *self.model.buffers()]
        self._floats = [i for i, t in enumerate(own) if t.is_floating_point()]
        self._own = [own[i] for i in self._floats]

    @torch.no_grad()
    def update(self, model: DAOModel) -> None:
        new = [*model.parameters(), *model.buffers()]
        torch._foreach_lerp_(self._own, [new[i] for i in self._floats], 1.0 - self.decay)


def progress(step: int, elapsed: float, cfg: TrainConfig) -> float:
    """Fraction of the run done: by steps, or by time when a time budget ends it sooner."""
    done = step / cfg.max_steps
    if cfg.time_budget:
        done = max(done, elapsed / cfg.time_budget)
    return min(done, 1.0)


def lr_factor(step: int, done: float, cfg: TrainConfig) -> float:
    """Linear warm-up over ``warmup`` steps, then cosine decay to ``min_lr_ratio``."""
    if step < cfg.warmup:
        return (step + 1) / cfg.warmup
    warm = min(cfg.warmup / cfg.max_steps, 0.5)
    x = max(0.0, (done - warm) / (1 - warm))
    return cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * x))


def energy_stats(records: Sequence[CrystalRecord]) -> tuple[float, float]:
    energies = np.array([r.energy for r in records if r.energy is not None], dtype=float)
    energies = energies[np.isfinite(energies)]
    if len(energies) < 2:
        raise ValueError("DAO-P needs at least two records with energy labels")
    return float(energies.mean()), float(energies.std() + 1e-8)


def standardise_per_dataset(
    datasets: dict[str, list[CrystalRecord]],
) -> tuple[list[CrystalRecord], dict[str, dict[str, float]]]:
    """Put each dataset's labels on one scale: (E - mean_d) / std_d.

    The datasets carry different energies (E_hull, heat of formation, absolute energy per atom);
    guidance and relaxation need gradients within a composition, which per-dataset
    standardisation preserves up to a positive factor. Unlabelled records keep ``None``.
    """
    merged: list[CrystalRecord] = []
    stats: dict[str, dict[str, float]] = {}
    for name, records in datasets.items():
        labelled = [r for r in records if r.energy is not None and np.isfinite(r.energy)]
        if len(labelled) < 2:
            merged.extend(records)
            continue
        mean, std = energy_stats(labelled)
        stats[name] = {"mean": mean, "std": std, "count": len(labelled)}
        merged.extend(
            r if r.energy is None else replace(r, energy=(r.energy - mean) / std) for r in records
        )
    return merged, stats


def split_datasets(
    datasets: dict[str, list[CrystalRecord]],
    out: str | Path,
    val_fraction: float,
    seed: int,
    split: str | Path | None = None,
) -> tuple[dict[str, list[CrystalRecord]], dict[str, list[CrystalRecord]], Path]:
    """Seeded train/validation split of each data set, recorded as ``out/split.json``.

    The split is by material id, so a later stage (Stage II on relaxed copies of the same
    structures, fine-tuning) reuses it by passing ``split``; an id held out in one data set is
    held out in every data set, so nothing validated on is trained on.
    """
    if split is not None:
        val_ids = set(load_split(split)["val"])
    else:
        val_ids = set()
        for records in datasets.values():
            _, val_idx = split_records(len(records), val_fraction, seed)
            val_ids.update(records[i].material_id for i in val_idx)
    train_sets = {k: [r for r in v if r.material_id not in val_ids] for k, v in datasets.items()}
    val_sets = {k: [r for r in v if r.material_id in val_ids] for k, v in datasets.items()}
    path = Path(out) / "split.json"
    if split is None or Path(split).resolve() != path.resolve():
        train_ids = sorted({r.material_id for v in train_sets.values() for r in v})
        save_split(path, train_ids, sorted(val_ids), seed, list(datasets))
    return train_sets, val_sets, path


def _setup_distributed() -> tuple[int, int, torch.device]:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    if torch.cuda.is_available():
        local = int(os.environ.get("LOCAL_RANK", "0"))
        torch.cuda.set_device(local)
        device = torch.device("cuda", local)
    else:
        device = torch.device("cpu")
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return rank, world, device


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def energy_label(cfg: TrainConfig, train: Sequence[CrystalRecord]) -> EnergyLabel:
    mean, std = energy_stats(train)
    return EnergyLabel(
        cfg.label_name,
        cfg.label_unit,
        mean,
        std,
        cfg.energy_loss,  # type: ignore[arg-type]
        cfg.per_dataset,
    )


def build_model(cfg: TrainConfig, train: Sequence[CrystalRecord]) -> DAOModel:
    if cfg.init:
        model = load_model(cfg.init, device="cpu")
        if model.kind == "dao-g" and cfg.kind == "dao-p":
            # DAO-P from a trained DAO-G: the same network, whose (unused) energy head now
            # learns this run's label; the backbone starts from the generator's features.
            model.kind, model.label = "dao-p", energy_label(cfg, train)
        elif model.kind != cfg.kind:
            raise ValueError(f"--init {cfg.init} is a {model.kind} model, not {cfg.kind}")
        model.name = ""
        model.sampling = replace(model.sampling, **cfg.sampling)
        return model.train()
    label = energy_label(cfg, train) if cfg.kind == "dao-p" else None
    preset = CrysformerConfig.preset(cfg.preset, cfg.elements)
    sampling = SamplerSettings(**cfg.sampling)
    return DAOModel(cfg.kind, preset, label, sampling=sampling)  # type: ignore[arg-type]


@torch.no_grad()
def evaluate(
    model: DAOModel,
    records: Sequence[CrystalRecord],
    batch_size: int,
    seed: int,
    max_pairs: int | None = None,
) -> dict[str, float]:
    """Mean losses over ``records`` at fixed noise (seeded), for comparable validation curves
    (float32, as every curve in docs/training.md).

    Batches obey training's ``max_pairs`` cap (a forward pass needs less memory than a training
    step); the training random streams (CPU and this model's GPU) continue untouched afterwards.
    """
    device = model.device
    totals: dict[str, torch.Tensor] = {}
    count = 0
    # manual_seed seeds every device: fork so the GPU stream is restored too, not restarted.
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(seed)
        was_training = model.training
        model.eval()
        for idx in bucketed_batches(records, batch_size, seed, max_pairs_per_batch=max_pairs):
            batch = CrystalBatch.from_records([records[i] for i in idx])
            losses = model.loss(batch.to(device, non_blocking=True))
            for k, v in losses.items():  # summed on the device, read once at the end
                total = totals.setdefault(k, torch.zeros((), device=device))
                total.add_(v.detach().float() * len(idx))
            count += len(idx)
        model.train(was_training)  # the weight average stays in eval mode
    return {k: float(v) / max(count, 1) for k, v in totals.items()}


def train(
    cfg: TrainConfig, train_records: Sequence[CrystalRecord], val_records: Sequence[CrystalRecord]
) -> DAOModel:
    """Train (or resume); returns the model, whose checkpoint is ``out/final`` when done."""
    rank, world, device = _setup_distributed()
    _seed_everything(cfg.seed + rank)
    out = Path(cfg.out)
    state_path = out / STATE_FILE
    resume = state_path.is_file()
    if resume:
        model = load_model(out / "last", device="cpu").train()
    else:
        model = build_model(cfg, train_records)
    model.to(device)
    if cfg.kind == "dao-p":
        model.label.loss = cfg.energy_loss  # type: ignore[assignment]
    # After the label is set: the average is a copy, and it is what validates and ships.
    average = WeightAverage(model, cfg.ema_decay) if cfg.ema_decay else None
    module: nn.Module = _Loss(model)
    if world > 1:
        module = nn.parallel.DistributedDataParallel(
            module,
            device_ids=[device.index] if device.type == "cuda" else None,
            find_unused_parameters=cfg.kind == "dao-g",  # DAO-G never uses the energy head
        )
    opt = torch.optim.Adam(
        model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay,
        fused=device.type == "cuda",  # one kernel for all parameters
    )  # fmt: skip
    step, epoch, history, trained_s = 0, 0, [], 0.0
    if resume:
        state = torch.load(state_path, map_location="cpu", weights_only=True)
        opt.load_state_dict(state["optimizer"])
        trained_s = state["trained_s"]
        step, epoch, history = state["step"], state["epoch"], json.loads(state["history"])
        if average and "average" in state:
            average.model.load_state_dict(state["average"])
    use_amp = cfg.amp and device.type == "cuda"
    started = time.perf_counter()
    seen = 0
    # Attention memory grows with the atom pairs (heads + 6K values each): on a GPU, 2048
    # crystals of 20 atoms.
    max_pairs = cfg.max_pairs or (2**20 if device.type == "cuda" else 4096)

    served = average.model if average else model  # the weights that validate and ship

    def checkpoint(folder: str, weights: DAOModel = model) -> None:
        if rank != 0:
            return
        record = {**cfg.record, "config": asdict(cfg), "step": step, "history": history[-20:]}
        save_model(weights, out / folder, record)
        (out / "history.json").write_text(json.dumps(history))
        torch.save(
            {
                "optimizer": opt.state_dict(),
                "trained_s": trained_s + time.perf_counter() - started,
                "step": step,
                "epoch": epoch,
                "history": json.dumps(history),
                **({"average": average.model.state_dict()} if average else {}),
            },
            state_path,
        )

    def elapsed() -> float:
        """Training seconds so far, the same on every rank (the schedule depends on it)."""
        seconds = trained_s + time.perf_counter() - started
        # Only the time limits read it; an all_reduce + .item() per step would stall the GPU queue.
        if world == 1 or (cfg.time_budget is None and cfg.time_limit is None):
            return seconds
        value = torch.tensor([seconds], device=device)
        dist.all_reduce(value, op=dist.ReduceOp.MAX)
        return float(value.item())

    done = progress(step, trained_s, cfg)
    stop = False
    while done < 1.0 and not stop:
        for idx in bucketed_batches(
            train_records, cfg.batch_size, cfg.seed + epoch, rank, world, max_pairs
        ):
            for group in opt.param_groups:
                group["lr"] = cfg.lr * lr_factor(step, done, cfg)
            batch = CrystalBatch.from_records([train_records[i] for i in idx])
            batch = batch.to(device, non_blocking=True)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_amp):
                losses = module(batch)
            opt.zero_grad(set_to_none=True)
            losses["total"].backward()
            torch.nn.utils.clip_grad_value_(model.parameters(), cfg.clip_value)
            opt.step()
            if average:
                average.update(model)
            step += 1
            seen += len(idx) * world
            seconds = elapsed()
            done = progress(step, seconds, cfg)
            if step % 50 == 0 or done >= 1.0:
                entry = {"step": step, **{k: round(v.item(), 5) for k, v in losses.items()}}
                entry["lr"] = opt.param_groups[0]["lr"]
                entry["structures_per_s"] = round(seen / (time.perf_counter() - started), 1)
                history.append(entry)
                if rank == 0:
                    log.info("%s", entry)
            if val_records and rank == 0 and step % cfg.eval_every == 0:
                val = evaluate(served, val_records, cfg.batch_size, cfg.seed, max_pairs)
                history.append({"step": step, **{f"val_{k}": round(v, 5) for k, v in val.items()}})
                log.info("validation %s", history[-1])
            if step % cfg.save_every == 0:
                checkpoint("last")
            stop = bool(cfg.time_limit and seconds - trained_s > cfg.time_limit)
            if stop or done >= 1.0:
                break
        epoch += 1
    checkpoint("last")
    if done >= 1.0:
        if val_records and rank == 0:
            val = evaluate(served, val_records, cfg.batch_size, cfg.seed, max_pairs)
            history.append({"step": step, **{f"val_{k}": round(v, 5) for k, v in val.items()}})
        checkpoint("final", served)
    if world > 1:
        dist.barrier()
    return served
