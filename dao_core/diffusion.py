"""DAO-G diffusion (method doc, sections 3 and 5): DDPM on the lattice, wrapped-normal VE on
fractional coordinates, the training loss, and the energy-guided predictor-corrector sampler.

Steps are indexed 1..T; index 0 of every schedule table is the clean state.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from dao_core.model import CrysformerOutput

N_IMAGES = 10  # periodic images n = -10..10 in the wrapped-normal sums
LATTICE_CLIP = 50.0  # A; bound on predicted clean lattice entries (cells of <= 100 atoms)


@dataclass(frozen=True)
class SamplerSettings:
    """Sampler knobs that belong to a trained model: tuned per data family on validation (as
    DiffCSP tunes its corrector step per dataset) and saved in the checkpoint config."""

    step_lr: float = 1e-5  # Langevin corrector step (method doc; DiffCSP's MP-20 value)
    temperature: float = 1.0  # noise std multiplier: 1 = learned distribution, < 1 = mode-seeking


def cosine_betas(steps: int, s: float = 0.008) -> torch.Tensor:
    x = torch.linspace(0, steps, steps + 1, dtype=torch.float64)
    alphas_cumprod = torch.cos(((x / steps) + s) / (1 + s) * math.pi * 0.5) ** 2
    alphas_cumprod = alphas_cumprod / alphas_cumprod[0]
    betas = 1 - alphas_cumprod[1:] / alphas_cumprod[:-1]
    return betas.clamp(1e-4, 0.9999)


def wrapped_normal_log_density(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """log p(x) of N(0, sigma^2) wrapped onto the unit circle (up to the 1/sqrt(2 pi) constant)."""
    n = torch.arange(-N_IMAGES, N_IMAGES + 1, device=x.device, dtype=x.dtype)
    z = x[..., None] + n
    s = sigma[..., None]
    return torch.logsumexp(-(z**2) / (2 * s**2), dim=-1) - torch.log(sigma)


def wrapped_normal_score(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """d/dx log p(x) of the wrapped normal; a softmax-weighted sum over periodic images."""
    n = torch.arange(-N_IMAGES, N_IMAGES + 1, device=x.device, dtype=x.dtype)
    z = x[..., None] + n
    s = sigma[..., None]
    weights = torch.softmax(-(z**2) / (2 * s**2), dim=-1)  # stable for sigma -> 0
    return -(weights * z).sum(-1) / sigma**2


def expected_squared_score(sigma: torch.Tensor, points: int = 4001) -> torch.Tensor:
    """lambda(sigma) = E[score^2] under the wrapped normal, by trapezoid quadrature.

    The grid spans +-min(0.5, 10 sigma) around 0, where all the mass is, so small sigmas are as
    accurate as large ones.
    """
    sigma = sigma.double()
    half = torch.clamp(10 * sigma, max=0.5)[:, None]
    x = torch.linspace(-1, 1, points, dtype=torch.float64)[None] * half
    s = sigma[:, None].expand_as(x)
    p = wrapped_normal_log_density(x, s).exp()
    score = wrapped_normal_score(x, s)
    return torch.trapezoid(p * score**2, x, dim=-1) / torch.trapezoid(p, x, dim=-1)


class DiffusionSchedule(nn.Module):
    """All per-step constants, stored as buffers so they follow the model's device."""

    def __init__(
        self, steps: int = 1000, sigma_begin: float = 0.005, sigma_end: float = 0.5
    ) -> None:
        super().__init__()
        self.steps = steps
        betas = torch.cat([torch.zeros(1, dtype=torch.float64), cosine_betas(steps)])
        alphas = 1 - betas
        alphas_cumprod = torch.cumprod(alphas, 0)
        posterior_var = torch.zeros_like(betas)
        posterior_var[1:] = betas[1:] * (1 - alphas_cumprod[:-1]) / (1 - alphas_cumprod[1:])
        sigmas = torch.cat(
            [
                torch.zeros(1, dtype=torch.float64),
                torch.exp(torch.linspace(math.log(sigma_begin), math.log(sigma_end), steps)),
            ]
        )
        lambdas = torch.cat(
            [torch.ones(1, dtype=torch.float64), expected_squared_score(sigmas[1:])]
        )
        self.sigma_begin = sigma_begin
        for name, value in dict(
            betas=betas,
            alphas=alphas,
            alphas_cumprod=alphas_cumprod,
            posterior_var=posterior_var,
            sigmas=sigmas,
            lambdas=lambdas,
        ).items():
            self.register_buffer(name, value.float(), persistent=False)


@dataclass
class NoisedBatch:
    t: torch.Tensor  # (B,) long in 1..T
    frac: torch.Tensor  # (B, N, 3) noised fractional coordinates
    lattice: torch.Tensor  # (B, 3, 3) noised lattice
    lattice_noise: torch.Tensor  # epsilon_L target
    coord_target: torch.Tensor  # score / sqrt(lambda_t) target


def add_noise(
    schedule: DiffusionSchedule,
    frac: torch.Tensor,
    lattice: torch.Tensor,
    mask: torch.Tensor,
    t: torch.Tensor | None = None,
) -> NoisedBatch:
    """Forward process at a uniformly drawn step per crystal (or the given ``t``)."""
    b = frac.shape[0]
    if t is None:
        t = torch.randint(1, schedule.steps + 1, (b,), device=frac.device)
    abar = schedule.alphas_cumprod[t][:, None, None]
    eps_l = torch.randn_like(lattice)
    noisy_lattice = abar.sqrt() * lattice + (1 - abar).sqrt() * eps_l
    sigma = schedule.sigmas[t][:, None, None]
    displacement = sigma * torch.randn_like(frac)
    noisy_frac = torch.remainder(frac + displacement, 1.0)
    score = wrapped_normal_score(displacement, sigma.expand_as(displacement))
    target = score / schedule.lambdas[t].sqrt()[:, None, None] * mask[..., None]
    return NoisedBatch(t, noisy_frac, noisy_lattice, eps_l, target)


def diffusion_losses(
    out: CrysformerOutput, noised: NoisedBatch, mask: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """(lattice MSE, coordinate MSE); the coordinate mean runs over real atoms only."""
    loss_lattice = ((out.lattice - noised.lattice_noise) ** 2).mean()
    per_atom = ((out.coord - noised.coord_target) ** 2).sum(-1)
    loss_coord = (per_atom * mask).sum() / (3 * mask.sum())
    return loss_lattice, loss_coord


ScoreFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], CrysformerOutput]
EnergyFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


@torch.no_grad()
def sample(
    score_fn: ScoreFn,
    schedule: DiffusionSchedule,
    mask: torch.Tensor,
    steps: int | None = None,
    settings: SamplerSettings = SamplerSettings(),  # noqa: B008 (frozen, immutable)
    energy_fn: EnergyFn | None = None,
    guidance_scale: float = 0.0,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Predictor-corrector sampling of (frac, lattice) for a padded batch of compositions.

    ``score_fn(frac, lattice, t)`` returns the DAO-G outputs, ``energy_fn(frac, lattice, t)`` the
    DAO-P energy per crystal. ``steps`` < T runs a strided subset of the trained steps (the
    schedule's own steps are always used; fewer steps trades accuracy for speed).
    ``settings.temperature`` scales the standard deviation of the noise injected by the predictor
    and the corrector: 1 samples the learned distribution, < 1 concentrates samples on its modes.
    """
    device = mask.device
    b, n = mask.shape
    total = schedule.steps
    steps = steps or total
    # Strided step indices T = k_S > ... > k_1 >= 1, and k_0 = 0.
    ks = torch.linspace(total, 1, steps, device=device).round().long().unique_consecutive().tolist()
    ks = ks + [0]

    def randn(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, device=device, generator=generator)

    frac = torch.rand(b, n, 3, device=device, generator=generator)
    lattice = randn(b, 3, 3)
    atom_mask = mask[..., None].float()
    sched = schedule
    for k, k_prev in zip(ks[:-1], ks[1:], strict=True):
        t = torch.full((b,), k, device=device, dtype=torch.long)
        sigma, sigma_prev = sched.sigmas[k], sched.sigmas[k_prev]
        sqrt_lambda = sched.lambdas[k].sqrt()
        last = k_prev == 0
        # Corrector: Langevin on X only.
        step = settings.step_lr * (sigma / sched.sigma_begin) ** 2
        score = score_fn(frac, lattice, t).coord * sqrt_lambda
        noise = settings.temperature * randn(b, n, 3) if not last else 0.0
        frac = torch.remainder(frac + (step * score + (2 * step).sqrt() * noise) * atom_mask, 1.0)

        # Predictor: reverse VE step on X, DDPM ancestral step on L (strided: use the
        # cumulative alphas between k and k_prev).
        out = score_fn(frac, lattice, t)
        abar, abar_prev = sched.alphas_cumprod[k], sched.alphas_cumprod[k_prev]
        alpha = abar / abar_prev  # respaced step when striding
        beta = 1 - alpha
        # DDPM posterior through the predicted clean lattice, clipped to a physical range:
        # near t = T, sqrt(abar) ~ 1e-3 would otherwise amplify network error a thousandfold.
        lattice0 = (lattice - (1 - abar).sqrt() * out.lattice) / abar.sqrt()
        lattice0 = lattice0.clamp(-LATTICE_CLIP, LATTICE_CLIP)
        mean_l = (abar_prev.sqrt() * beta * lattice0 + alpha.sqrt() * (1 - abar_prev) * lattice) / (
            1 - abar
        )
        var_l = beta * (1 - abar_prev) / (1 - abar)
        var_x = sigma_prev**2 * (sigma**2 - sigma_prev**2) / sigma**2
        mean_x = frac + (sigma**2 - sigma_prev**2) * out.coord * sqrt_lambda
        if energy_fn is not None and guidance_scale > 0:
            # Classifier guidance with p(stable | x) ~ exp(-w E): descend the DAO-P energy.
            with torch.enable_grad():
                f = frac.detach().requires_grad_(True)
                lat = lattice.detach().requires_grad_(True)
                grad_f, grad_l = torch.autograd.grad(energy_fn(f, lat, t).sum(), (f, lat))
            mean_x = mean_x - guidance_scale * var_x * grad_f
            mean_l = mean_l - guidance_scale * var_l * grad_l
        if last:
            frac, lattice = mean_x, mean_l
        else:
            frac = mean_x + settings.temperature * var_x.sqrt() * randn(b, n, 3)
            lattice = mean_l + settings.temperature * var_l.sqrt() * randn(b, 3, 3)
        frac = torch.remainder(frac * atom_mask, 1.0)
    return frac, lattice
