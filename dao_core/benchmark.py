"""CSP benchmark under the DiffCSP protocol: for every test crystal, sample k structures for its
composition and atom count, then score match rate / RMSE / validity (``dao_core.metrics``).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass

import torch

from dao_core.csp import model_info, sample_batch
from dao_core.dao import DAOModel
from dao_core.data import CrystalRecord
from dao_core.metrics import evaluate_csp


@dataclass
class BenchmarkResult:
    n_crystals: int
    samples: int
    match_rate: float
    rmse: float | None
    valid_fraction: float
    sampling_s: float
    structures_per_s: float
    matching_s: float
    steps: int
    scale: float
    device: str
    generator: dict | None
    guidance: dict | None

    def to_dict(self) -> dict:
        return asdict(self)


def run_benchmark(
    model: DAOModel,
    records: Sequence[CrystalRecord],
    samples: int = 1,
    guidance: DAOModel | None = None,
    scale: float = 0.0,
    steps: int | None = None,
    batch_size: int = 1024,
    seed: int = 0,
    n_jobs: int | None = None,
    progress: Callable[[int], None] | None = None,
) -> BenchmarkResult:
    """Sample ``samples`` structures per record and evaluate them against the records."""
    compositions = [r.atomic_numbers for r in records] * samples
    generator = torch.Generator(device=model.device).manual_seed(seed)
    if model.device.type == "cuda":
        torch.cuda.synchronize()
    started = time.perf_counter()
    predicted = []
    # Chunks of one batch keep the progress display live; ordering stays intact.
    for start in range(0, len(compositions), batch_size):
        chunk = compositions[start : start + batch_size]
        predicted += sample_batch(model, chunk, steps, guidance, scale, batch_size, generator)
        if progress:
            progress(len(chunk))
    sampling_s = time.perf_counter() - started
    n = len(records)
    per_crystal = [[predicted[k * n + i] for k in range(samples)] for i in range(n)]
    started = time.perf_counter()
    metrics = evaluate_csp(per_crystal, [r.to_structure() for r in records], n_jobs=n_jobs)
    return BenchmarkResult(
        n_crystals=n,
        samples=samples,
        match_rate=metrics.match_rate,
        rmse=metrics.rmse,
        valid_fraction=metrics.valid_fraction,
        sampling_s=round(sampling_s, 3),
        structures_per_s=round(len(compositions) / sampling_s, 2),
        matching_s=round(time.perf_counter() - started, 3),
        steps=steps or model.schedule.steps,
        scale=scale if guidance is not None else 0.0,
        device=str(model.device),
        generator=model_info(model),
        guidance=model_info(guidance),
    )
