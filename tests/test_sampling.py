"""The sampler, guidance, DAO-P physics and dataset relaxation, with exact references where
they exist and the bundled models where the behaviour depends on training."""

import numpy as np
import pytest
import torch
from ase import units

from dao_core.checkpoint import load_model
from dao_core.dao import DAOModel
from dao_core.data import CrystalBatch, parse_composition
from dao_core.diffusion import DiffusionSchedule, SamplerSettings, sample, wrapped_normal_score
from dao_core.model import CrysformerConfig, CrysformerOutput


@pytest.mark.parametrize(
    ("steps", "settings"),
    [(1000, SamplerSettings()), (50, SamplerSettings()),
     (1000, SamplerSettings(step_lr=5e-7, temperature=0.5))],
)  # fmt: skip
def test_sampler_with_exact_scores_recovers_the_crystal(
    steps: int, settings: SamplerSettings
) -> None:
    """For a single crystal the noised distribution's scores are known in closed form; fed
    those, the predictor-corrector sampler must land on the crystal (strided steps and
    lower-temperature settings too)."""
    sched = DiffusionSchedule(1000)
    x0 = torch.tensor([[0.1, 0.2, 0.3], [0.6, 0.7, 0.8], [0.95, 0.05, 0.5]])
    l0 = torch.tensor([[4.0, 0.0, 0.0], [1.0, 5.0, 0.0], [0.5, 0.3, 6.0]])
    b = 6
    mask = torch.ones(b, 3, dtype=torch.bool)

    def exact(frac: torch.Tensor, lattice: torch.Tensor, t: torch.Tensor) -> CrysformerOutput:
        sigma = sched.sigmas[t][:, None, None].expand_as(frac)
        d = torch.remainder(frac - x0 + 0.5, 1.0) - 0.5
        coord = wrapped_normal_score(d.double(), sigma.double()).float()
        coord = coord / sched.lambdas[t].sqrt()[:, None, None]
        abar = sched.alphas_cumprod[t][:, None, None]
        eps = (lattice - abar.sqrt() * l0) / (1 - abar).sqrt()
        return CrysformerOutput(coord, eps, torch.zeros(b))

    gen = torch.Generator().manual_seed(0)
    frac, lattice = sample(exact, sched, mask, steps, settings, generator=gen)
    err = torch.remainder(frac - x0 + 0.5, 1.0) - 0.5
    assert err.abs().max() < 1e-3
    assert (lattice - l0).abs().max() < 1e-2


def test_steps_default_to_the_sampler_settings() -> None:
    """``steps=None`` runs the settings' number of steps (two network calls each), and every
    bundled DAO-G defaults to the 100 steps chosen on validation."""
    calls = []

    def counting(frac: torch.Tensor, lattice: torch.Tensor, t: torch.Tensor) -> CrysformerOutput:
        calls.append(int(t[0]))
        return CrysformerOutput(torch.zeros_like(frac), torch.zeros_like(lattice), t * 0.0)

    mask = torch.ones(2, 3, dtype=torch.bool)
    sample(counting, DiffusionSchedule(1000), mask, settings=SamplerSettings(steps=37))
    assert len(calls) == 74 and calls[0] == 1000 and calls[-1] == 1
    for name in ("dao-g-base", "dao-g-perov5", "dao-g-carbon24"):
        assert load_model(name, device="cpu").sampling.steps == 100


def test_steps_beyond_the_trained_noise_levels_are_refused() -> None:
    """A model trained on T noise levels samples 1..T steps; more would silently run T while
    the provenance said otherwise, and a guide trained on another T would see other levels."""
    from dao_core.errors import DAOInputError

    cfg = CrysformerConfig.preset("tiny")
    gen, guide = DAOModel("dao-g", cfg, steps=50), DAOModel("dao-p", cfg, steps=100)
    batch = CrystalBatch.from_compositions([parse_composition("NaCl")])
    with pytest.raises(DAOInputError, match="trained on 50 noise levels, so 1 to 50 steps"):
        gen.sample(batch, steps=51)
    with pytest.raises(DAOInputError, match="trained on 100 noise levels, the generator on 50"):
        gen.sample(batch, steps=5, guidance=guide, scale=1.0)
    assert gen.sample(batch, steps=50).frac.shape == (1, 2, 3)


def test_energy_forces_and_stress_are_consistent_derivatives() -> None:
    """Forces = -dE/dr and stress = (1/V) dE/dstrain, checked by central differences."""
    torch.manual_seed(0)
    model = DAOModel("dao-p", CrysformerConfig.preset("tiny")).double().eval()
    types = torch.tensor([[11, 17, 11, 17]])
    mask = torch.ones(1, 4, dtype=torch.bool)
    frac = torch.rand(1, 4, 3, dtype=torch.float64)
    lattice = torch.tensor([[[5.6, 0.1, 0.0], [0.0, 5.5, 0.2], [0.1, 0.0, 5.7]]]).double()
    e, forces, stress = model.energy_forces_stress(CrystalBatch(types, frac, lattice, mask))

    def total(f: torch.Tensor, lat: torch.Tensor) -> float:
        return float(model.energy(CrystalBatch(types, f, lat, mask), physical=True)[0] * 4)

    h = 1e-5
    cart_step = torch.zeros(1, 4, 3, dtype=torch.float64)
    cart_step[0, 2, 1] = h  # move atom 2 along y (Cartesian)
    df = cart_step @ torch.linalg.inv(lattice)
    fd_force = -(total(frac + df, lattice) - total(frac - df, lattice)) / (2 * h)
    assert float(forces[0, 2, 1]) == pytest.approx(fd_force, rel=1e-5, abs=1e-8)
    strain = torch.zeros(3, 3, dtype=torch.float64)
    strain[0, 2] = strain[2, 0] = h  # symmetric shear
    plus = lattice @ (torch.eye(3, dtype=torch.float64) + strain)
    minus = lattice @ (torch.eye(3, dtype=torch.float64) - strain)
    volume = float(torch.linalg.det(lattice)[0])
    fd = (total(frac, plus) - total(frac, minus)) / (2 * h) / volume / units.GPa
    assert float(stress[0, 0, 2] + stress[0, 2, 0]) == pytest.approx(fd, rel=1e-5, abs=1e-8)


@pytest.fixture(scope="module")
def bundled() -> tuple[DAOModel, DAOModel]:
    return load_model("dao-g-base", device="cpu"), load_model("dao-p-base", device="cpu")


def mean_dao_p_energy(
    generator: DAOModel, dao_p: DAOModel, formula: str, scale: float, seed: int
) -> float:
    batch = CrystalBatch.from_compositions([parse_composition(formula)] * 16)
    gen = torch.Generator().manual_seed(seed)
    sampled = generator.sample(batch, guidance=dao_p, scale=scale, generator=gen)
    with torch.no_grad():
        return float(dao_p.energy(sampled).mean())


def test_guidance_lowers_dao_p_energy(bundled: tuple[DAOModel, DAOModel]) -> None:
    """Guidance at w = 50 lowers the mean DAO-P energy of NaCl samples (model defaults, 100
    steps). Measured on the 2-core CPU with the dao-g-base / dao-p-base of 2026-12-06 (sampler
    temperature 0.7), seeds 0-5, 16 crystals each: the drop per seed (same seed, both scales)
    is 0.054 with s.d. 0.035 (at temperature 1.0: 0.077, s.d. 0.047), so the mean of six seeds
    sits 3.8 standard errors above zero. Same seeds give identical samples when guidance does
    nothing, so a no-op or a sign error fails and any machine's numerics pass. (For SrTiO3 the
    unguided samples already sit at DAO-P's minimum and guidance changes nothing:
    docs/benchmarks.md.)"""
    generator, dao_p = bundled
    seeds = range(6)
    unguided = [mean_dao_p_energy(generator, dao_p, "NaCl", 0.0, seed) for seed in seeds]
    guided = [mean_dao_p_energy(generator, dao_p, "NaCl", 50.0, seed) for seed in seeds]
    assert np.mean(unguided) - np.mean(guided) > 0.0


def test_lbfgs_relaxation_lowers_dao_p_energy(bundled: tuple[DAOModel, DAOModel]) -> None:
    generator, dao_p = bundled
    batch = CrystalBatch.from_compositions([parse_composition("NaCl", 2)] * 8)
    sampled = generator.sample(batch, steps=50, generator=torch.Generator().manual_seed(1))
    relaxed = dao_p.relax(sampled, steps=5, lr=1.0)
    assert float(dao_p.energy(relaxed).sum()) < float(dao_p.energy(sampled).sum())
    assert np.all(relaxed.frac.numpy() >= 0) and np.all(relaxed.frac.numpy() < 1)
