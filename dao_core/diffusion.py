"""DAO-G diffusion (method doc, sections 3 and 5): DDPM on the lattice, wrapped-normal VE on
fractional coordinates, the training loss, and the energy-guided predictor-corrector sampler.

Steps are indexed 1..T; index 0 of every schedule table is the clean state.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import NamedTuple

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
    steps: int = 1000  # predictor-corrector steps (a strided schedule below the trained T)


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


def expected_squared_score(sigma: torch.Tensor, points: int = 201) -> torch.Tensor:
    """lambda(sigma) = E[score^2] under the wrapped normal, by trapezoid quadrature.

    The grid spans +-min(0.5, 10 sigma) around 0, where all the mass is, so small sigmas are as
    accurate as large ones. The integrand is smooth and vanishes (or is periodic) at the grid's
    ends, so the trapezoid rule converges exponentially: 201 points agree with 4001 to 1e-15
    (and load a model in 0.1 s instead of 5 s).
    """
    sigma = sigma.double()
    half = torch.clamp(10 * sigma, max=0.5)[:, None]
    x = torch.linspace(-1, 1, points, dtype=torch.float64)[None] * half
    s = sigma[:, None].expand_as(x)
    p = wrapped_normal_log_density(x, s).exp()
    score = wrapped_normal_score(x, s)
    return torch.trapezoid(p * score**2, x, dim=-1) / torch.trapezoid(p, x, dim=-1)


class DiffusionSchedule(nn.Module):
    """All per-step constants: float32 buffers that follow the model's device (training), and
    the float64 originals (``exact``) from which the sampler derives its step constants."""

    def __init__(
        self, steps: int = 1000, sigma_begin: float = 0.005, sigma_end: float = 0.5
    ) -> None:
        super().__init__()
        self.steps = steps
        self.sigma_begin = sigma_begin
        zero = torch.zeros(1, dtype=torch.float64)
        alphas_cumprod = torch.cumprod(1 - torch.cat([zero, cosine_betas(steps)]), 0)
        log_sigmas = torch.linspace(
            math.log(sigma_begin), math.log(sigma_end), steps, dtype=torch.float64
        )
        sigmas = torch.cat([zero, log_sigmas.exp()])
        lambdas = torch.cat([zero + 1, expected_squared_score(sigmas[1:])])
        self.exact = dict(alphas_cumprod=alphas_cumprod, sigmas=sigmas, lambdas=lambdas)
        for name, value in self.exact.items():
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


class StepTable(NamedTuple):
    """Per-step constants of a (possibly strided) predictor-corrector run, one row per step.

    Computed once in float64 and kept on the device, so a step reads its constants by index:
    the loop needs no host arithmetic and can be captured as one CUDA graph.
    """

    t: torch.Tensor  # (S,) long: trained step index k, from T down to 1
    coef: torch.Tensor  # (S, len(COLUMNS)) float32

    COLUMNS = (
        "sqrt_lambda",  # the network's coordinate output times this is the score
        "corrector_step",  # Langevin step on X
        "corrector_noise",  # temperature * sqrt(2 * step); 0 on the last step
        "x_drift",  # sigma_k^2 - sigma_prev^2 (reverse VE step on X)
        "x_noise",  # temperature * posterior std of X
        "l_eps",  # sqrt(1 - abar_k): clean-lattice estimate L0 = (L - l_eps * eps) * l_inv
        "l_inv",  # 1 / sqrt(abar_k)
        "l_from_clean",  # DDPM posterior mean = l_from_clean * L0 + l_from_noisy * L
        "l_from_noisy",
        "l_var",  # posterior variance of L
        "l_noise",  # temperature * sqrt(l_var)
    )


def step_table(
    schedule: DiffusionSchedule, steps: int, settings: SamplerSettings, device: torch.device
) -> StepTable:
    """Strided steps T = k_S > ... > k_1 >= 1 (k_0 = 0) and their sampler constants.

    Striding keeps the trained noise levels: the VE predictor jumps from sigma_k to
    sigma_prev, and the DDPM step uses the cumulative alphas between k and k_prev (respacing).
    """
    total = schedule.steps
    ks = torch.linspace(total, 1, steps, dtype=torch.float64).round().long().unique_consecutive()
    ks_prev = torch.cat([ks[1:], torch.zeros(1, dtype=torch.long)])
    table = schedule.exact
    sigma, sigma_prev = table["sigmas"][ks], table["sigmas"][ks_prev]
    abar, abar_prev = table["alphas_cumprod"][ks], table["alphas_cumprod"][ks_prev]
    temp = settings.temperature
    corrector_step = settings.step_lr * (sigma / schedule.sigma_begin) ** 2
    not_last = (ks_prev > 0).double()
    x_var = sigma_prev**2 * (sigma**2 - sigma_prev**2) / sigma**2
    alpha = abar / abar_prev
    l_var = (1 - alpha) * (1 - abar_prev) / (1 - abar)
    columns = dict(
        sqrt_lambda=table["lambdas"][ks].sqrt(),
        corrector_step=corrector_step,
        corrector_noise=temp * (2 * corrector_step).sqrt() * not_last,
        x_drift=sigma**2 - sigma_prev**2,
        x_noise=temp * x_var.sqrt(),
        l_eps=(1 - abar).sqrt(),
        l_inv=1 / abar.sqrt(),
        l_from_clean=abar_prev.sqrt() * (1 - alpha) / (1 - abar),
        l_from_noisy=alpha.sqrt() * (1 - abar_prev) / (1 - abar),
        l_var=l_var,
        l_noise=temp * l_var.sqrt(),
    )
    coef = torch.stack([columns[name] for name in StepTable.COLUMNS], dim=-1)
    return StepTable(ks.to(device), coef.float().to(device))


@dataclass
class PredictorCorrector:
    """One predictor-corrector step of DAO-G sampling, optionally guided by DAO-P.

    The corrector is Langevin dynamics on X; the predictor a reverse VE step on X and a DDPM
    ancestral step on L through the predicted clean lattice, clipped to a physical range (near
    t = T, 1 / sqrt(abar) ~ 1e3 would otherwise amplify network error a thousandfold).
    Guidance adds -w grad_L E to the lattice score (p(stable | x) ~ exp(-w E)), so the lattice
    predictor mean moves by -w * (its step's variance) * grad_L E. The coordinates are not
    guided: the noise-conditioned DAO-P's gradient in X grows with the noise (mean |dE/dX| 18 at
    sigma 0.3 against 4-6 near sigma 0, where a smooth E[E_0 | x_t] would flatten) and, applied
    as the authors do, raised the final DAO-P energy at every w measured (docs/benchmarks.md).
    """

    score_fn: ScoreFn
    table: StepTable
    mask: torch.Tensor  # (B, N) bool
    energy_fn: EnergyFn | None = None
    guidance_scale: float = 0.0
    generator: torch.Generator | None = None

    def randn(self, *shape: int) -> torch.Tensor:
        return torch.randn(*shape, device=self.mask.device, generator=self.generator)

    def __call__(
        self, frac: torch.Tensor, lattice: torch.Tensor, t: torch.Tensor, row: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """One step: ``t`` (1,) is the trained step index, ``row`` (1, C) its constants."""
        b, n = self.mask.shape
        c = dict(zip(StepTable.COLUMNS, row.unbind(-1), strict=True))
        atom_mask = self.mask[..., None].to(frac.dtype)
        t = t.expand(b)

        score = self.score_fn(frac, lattice, t).coord * c["sqrt_lambda"]
        kick = c["corrector_step"] * score + c["corrector_noise"] * self.randn(b, n, 3)
        frac = torch.remainder(frac + kick * atom_mask, 1.0)

        out = self.score_fn(frac, lattice, t)
        lattice0 = ((lattice - c["l_eps"] * out.lattice) * c["l_inv"]).clamp(
            -LATTICE_CLIP, LATTICE_CLIP
        )
        mean_l = c["l_from_clean"] * lattice0 + c["l_from_noisy"] * lattice
        mean_x = frac + c["x_drift"] * out.coord * c["sqrt_lambda"]
        if self.energy_fn is not None and self.guidance_scale > 0:
            with torch.enable_grad():
                lat = lattice.detach().requires_grad_(True)
                (grad_l,) = torch.autograd.grad(self.energy_fn(frac, lat, t).sum(), (lat,))
            mean_l = mean_l - self.guidance_scale * c["l_var"] * grad_l
        frac = torch.remainder((mean_x + c["x_noise"] * self.randn(b, n, 3)) * atom_mask, 1.0)
        lattice = mean_l + c["l_noise"] * self.randn(b, 3, 3)
        return frac, lattice

    def run(
        self, frac: torch.Tensor, lattice: torch.Tensor, graph: bool
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if not graph:  # one-row slices, the shapes the graph's indexed reads have
            for i in range(len(self.table.t)):
                rows = slice(i, i + 1)
                frac, lattice = self(frac, lattice, self.table.t[rows], self.table.coef[rows])
            return frac, lattice
        return self._run_graph(frac, lattice)

    def _run_graph(
        self, frac: torch.Tensor, lattice: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The same steps as one captured CUDA graph, replayed once per step: a device-side
        step counter selects each step's constants, so no launch or host work happens per
        step beyond one replay."""
        state = [frac.clone(), lattice.clone()]
        # A one-element index: indexing with a 0-d tensor would read it on the host.
        step = torch.zeros(1, dtype=torch.long, device=frac.device)

        def advance() -> None:
            new_frac, new_lattice = self(*state, self.table.t[step], self.table.coef[step])
            state[0].copy_(new_frac)
            state[1].copy_(new_lattice)
            step.add_(1)

        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):  # warm-up outside capture: cuBLAS handles, allocator
            advance()
        torch.cuda.current_stream().wait_stream(side)
        state[0].copy_(frac)
        state[1].copy_(lattice)
        step.zero_()
        graph = torch.cuda.CUDAGraph()
        if self.generator is not None:
            graph.register_generator_state(self.generator)
        with torch.cuda.graph(graph):
            advance()
        for _ in range(len(self.table.t)):
            graph.replay()
        return state[0], state[1]


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
    graph: bool | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Predictor-corrector sampling of (frac, lattice) for a padded batch of compositions.

    ``score_fn(frac, lattice, t)`` returns the DAO-G outputs, ``energy_fn(frac, lattice, t)`` the
    DAO-P energy per crystal. ``steps`` (default ``settings.steps``) below T runs a strided
    subset of the trained steps. ``settings.temperature`` scales the standard deviation of the
    noise injected by the predictor and the corrector: 1 samples the learned distribution, < 1
    concentrates samples on its modes. ``graph`` (default: on CUDA) replays one captured CUDA
    graph per step instead of launching every kernel from Python.
    """
    device = mask.device
    b, n = mask.shape
    table = step_table(schedule, steps or settings.steps, settings, device)
    frac = torch.rand(b, n, 3, device=device, generator=generator)
    lattice = torch.randn(b, 3, 3, device=device, generator=generator)
    step = PredictorCorrector(score_fn, table, mask, energy_fn, guidance_scale, generator)
    # autocast drops its cache of low-precision weight copies when its outermost region ends:
    # an enclosing (disabled) region keeps it for the whole run, so a bf16 network is not
    # re-cast at every evaluation (~170 copy kernels, 8 % of a 5-atom H100 step).
    with torch.autocast(device.type, enabled=False):
        return step.run(frac, lattice, device.type == "cuda" if graph is None else graph)
