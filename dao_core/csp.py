"""Crystal-structure prediction with trained models: generate candidates for a composition
(DAO-G, optionally guided by DAO-P) and score structures with DAO-P. The public API that
``dao_flows`` and the CLI call.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch
from pymatgen.core import Structure

import dao_core
from dao_core.checkpoint import load_model
from dao_core.dao import DAOModel
from dao_core.data import CrystalBatch, parse_composition
from dao_core.data.batches import BATCH_COST_ROWS, size_buckets
from dao_core.diffusion import SamplerSettings
from dao_core.errors import DAOInputError

DEFAULT_GENERATOR = "dao-g-base"
DEFAULT_GUIDANCE = "dao-p-base"
# Guidance is off by default: with the per-dataset DAO-P, w = 5-20 lowered the MP-20 match rate
# (8.9 % -> 4.1-5.7 %); with the uniform-label one it is neutral to +2 points (w = 20, 200
# mp20like crystals), not yet measured on the whole set (docs/benchmarks.md). Opt in with ``scale``.
DEFAULT_SCALE = 0.0


def default_generator() -> str:
    """DAO-G checkpoint used when none is given: ``$DAO_G_MODEL`` or the bundled base model."""
    return os.environ.get("DAO_G_MODEL", DEFAULT_GENERATOR)


def default_guidance() -> str:
    """DAO-P checkpoint used when none is given: ``$DAO_P_MODEL`` or the bundled base model."""
    return os.environ.get("DAO_P_MODEL", DEFAULT_GUIDANCE)


@dataclass
class GenerationResult:
    structures: list[Structure]
    provenance: dict[str, Any] = field(default_factory=dict)


def model_info(model: DAOModel | None) -> dict[str, str] | None:
    if model is None:
        return None
    return {"name": model.name, "kind": model.kind, "sha256": model.content_hash}


def fresh_seed() -> int:
    """A seed from OS entropy, for runs given none: callers record it so the run can be
    repeated; below 2**31 so numpy and every torch device accept it."""
    return int(np.random.SeedSequence().entropy % 2**31)


def sample_batch(
    model: DAOModel,
    compositions: Sequence[np.ndarray],
    steps: int | None = None,
    guidance: DAOModel | None = None,
    scale: float = 0.0,
    batch_size: int = 256,
    generator: torch.Generator | None = None,
    sampling: SamplerSettings | None = None,
    compile: bool = False,
) -> list[Structure]:
    """One structure per composition (arrays of atomic numbers), sampled in padded batches.

    Compositions are sampled in batches of similar size (:func:`size_buckets`; when compiling,
    the fewest batches, as each shape compiles anew, though each ``batch_size`` chunk is still
    padded to its own largest crystal); results come back in input order. ``sampling=None``
    uses the model's own sampler settings; ``compile`` see DAOModel.sample.
    """
    out: list[Structure | None] = [None] * len(compositions)
    device = model.device
    sizes = [len(c) for c in compositions]
    cost = np.inf if compile else BATCH_COST_ROWS.get(device.type, BATCH_COST_ROWS["cuda"])
    for idx in size_buckets(sizes, batch_size, cost):
        batch = CrystalBatch.from_compositions([compositions[i] for i in idx]).to(device)
        sampled = model.sample(batch, steps, guidance, scale, generator, sampling, compile=compile)
        for i, structure in zip(idx, sampled.to_structures(), strict=True):
            out[i] = structure
    return out  # type: ignore[return-value]


def generate(
    formula: str,
    n: int,
    model: str | DAOModel = DEFAULT_GENERATOR,
    guidance: str | DAOModel | None = DEFAULT_GUIDANCE,
    scale: float = DEFAULT_SCALE,
    steps: int | None = None,
    formula_units: int | None = None,
    seed: int | None = None,
    device: str | None = None,
    batch_size: int = 256,
    sampling: SamplerSettings | None = None,
) -> GenerationResult:
    """``n`` candidate structures for ``formula`` (× ``formula_units``); ``sampling=None``
    uses the generator's own sampler settings, ``steps=None`` their number of steps."""
    if n < 1:
        raise DAOInputError(f"number of candidates must be at least 1, got {n}")
    atoms = parse_composition(formula, formula_units)
    generator_model = load_model(model, device=device)
    dev = generator_model.device
    if generator_model.kind != "dao-g":
        raise DAOInputError(f"{generator_model.name} is a {generator_model.kind} model, not DAO-G")
    guide = load_model(guidance, device=str(dev)) if guidance is not None and scale > 0 else None
    if guide is not None and guide.kind != "dao-p":
        raise DAOInputError(f"guidance model {guide.name} is not a DAO-P model")
    if seed is None:
        seed = fresh_seed()
    rng = torch.Generator(device=dev).manual_seed(seed)
    started = time.perf_counter()
    structures = sample_batch(
        generator_model, [atoms] * n, steps, guide, scale, batch_size, rng, sampling
    )
    provenance = {
        "formula": formula,
        "formula_units": formula_units,
        "n_atoms": int(len(atoms)),
        "n": n,
        "generator": model_info(generator_model),
        "guidance": model_info(guide),
        "scale": scale if guide is not None else 0.0,
        "steps": steps or (sampling or generator_model.sampling).steps,
        "sampling": asdict(sampling or generator_model.sampling),
        "seed": seed,
        "device": str(dev),
        "cpu_threads": torch.get_num_threads(),
        "wall_time_s": round(time.perf_counter() - started, 3),
        "dao_version": dao_core.__version__,
    }
    return GenerationResult(structures, provenance)


def score_energy(
    structures: Sequence[Structure],
    model: str | DAOModel = DEFAULT_GUIDANCE,
    device: str | None = None,
    batch_size: int = 256,
) -> np.ndarray:
    """DAO-P energy per structure at the clean noise level, in the model's label units."""
    dao_p = load_model(model, device=device)
    scores = np.empty(len(structures))
    with torch.no_grad():
        for start in range(0, len(structures), batch_size):
            chunk = list(structures[start : start + batch_size])
            batch = CrystalBatch.from_structures(chunk, canonical=True).to(dao_p.device)
            e = dao_p.energy(batch, physical=True)
            scores[start : start + len(chunk)] = e.float().cpu().numpy()
    return scores
