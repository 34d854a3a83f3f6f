"""CSP benchmark under the DiffCSP protocol: for every test crystal, sample k structures for its
composition and atom count, then score match rate / RMSE / validity (``dao_core.metrics``).
"""

from __future__ import annotations

import gzip
import json
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from pymatgen.core import Structure

from dao_core.csp import model_info, sample_batch
from dao_core.dao import DAOModel
from dao_core.data import CrystalRecord
from dao_core.diffusion import SamplerSettings
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
    sampling: dict[str, float]  # SamplerSettings fields
    device: str
    generator: dict[str, str] | None  # csp.model_info
    guidance: dict[str, str] | None
    material_ids: list[str]
    rms_per_crystal: list[float | None]  # None = not matched
    predictions: list[list[Structure | None]] = field(repr=False, default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """Metrics and per-crystal RMS (JSON-ready; the predicted structures are left out)."""
        out = asdict(self)
        del out["predictions"]
        return out

    def save_predictions(self, path: str | Path) -> None:
        """Predicted structures per test crystal as gzipped JSON (pymatgen dicts), for analysis."""
        payload = [
            {"material_id": mid, "rms": rms, "samples": [s and s.as_dict() for s in preds]}
            for mid, rms, preds in zip(
                self.material_ids, self.rms_per_crystal, self.predictions, strict=True
            )
        ]
        with gzip.open(path, "wt") as handle:
            json.dump(payload, handle)


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
    sampling: SamplerSettings | None = None,
    compile: bool = False,
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
        predicted += sample_batch(
            model, chunk, steps, guidance, scale, batch_size, generator, sampling, compile
        )
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
        steps=steps or (sampling or model.sampling).steps,
        scale=scale if guidance is not None else 0.0,
        sampling=asdict(sampling or model.sampling),
        device=str(model.device),
        generator=model_info(model),
        guidance=model_info(guidance),
        material_ids=[r.material_id for r in records],
        rms_per_crystal=metrics.rms_per_crystal,
        predictions=per_crystal,
    )
