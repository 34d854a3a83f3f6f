"""DAO-G and DAO-P: one Crysformer, one diffusion schedule, and (for DAO-P) a standardised
energy head. ``DAOModel`` is what checkpoints hold and what sampling, guidance, ranking and
relaxation call.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Literal

import torch
from ase import units
from torch import nn

from dao_core.data import CrystalBatch
from dao_core.diffusion import (
    DiffusionSchedule,
    SamplerSettings,
    add_noise,
    diffusion_losses,
    sample,
)
from dao_core.errors import DAOInputError
from dao_core.model import Crysformer, CrysformerConfig, CrysformerOutput

Kind = Literal["dao-g", "dao-p"]


def check_sampling_steps(steps: int, trained: int, name: str | None = None) -> None:
    """Sampling runs a strided subset of the trained noise levels, so 1 to ``trained`` steps;
    more would silently run ``trained`` while the provenance recorded ``steps``."""
    if not 1 <= steps <= trained:
        raise DAOInputError(
            f"{steps} sampling steps: {name or 'this model'} was trained on "
            f"{trained} noise levels, so 1 to {trained} steps can be sampled"
        )


# The noise level at which DAO-P acts as a plain predictor. Step 1 has sigma_x = 0.005 and
# sqrt(1 - abar) = 0.01: clean for all purposes, and an embedding the network was trained on.
CLEAN_STEP = 1


@dataclass
class EnergyLabel:
    """How DAO-P energies map to physical units: value = mean + std * prediction."""

    name: str = "energy_per_atom"
    unit: str = "eV/atom"
    mean: float = 0.0
    std: float = 1.0
    loss: Literal["mse", "exp"] = "mse"
    per_dataset: dict[str, dict[str, float]] = field(default_factory=dict)


class DAOModel(nn.Module):
    def __init__(
        self,
        kind: Kind,
        config: CrysformerConfig,
        label: EnergyLabel | None = None,
        steps: int = 1000,
        sampling: SamplerSettings | None = None,
    ) -> None:
        super().__init__()
        if kind not in ("dao-g", "dao-p"):
            raise ValueError(f"unknown model kind {kind!r}; expected 'dao-g' or 'dao-p'")
        self.kind: Kind = kind
        self.config = config
        self.label = label or EnergyLabel()
        self.net = Crysformer(config)
        self.schedule = DiffusionSchedule(steps)
        self.sampling = sampling or SamplerSettings()  # this model's tuned sampler defaults
        self.name = ""  # set by the loader: bundled name or path
        self.content_hash = ""

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    def forward(self, batch: CrystalBatch, t: torch.Tensor) -> CrysformerOutput:
        """Scores (and DAO-P energies) of ``batch`` at noise steps ``t`` (B,)."""
        return self.net(batch, t)

    def loss(self, batch: CrystalBatch) -> dict[str, torch.Tensor]:
        """Diffusion losses (+ the energy loss for DAO-P on the noised structure, clean label)."""
        noised = add_noise(self.schedule, batch.frac, batch.lattice, batch.mask)
        out = self(replace(batch, frac=noised.frac, lattice=noised.lattice), noised.t)
        loss_lattice, loss_coord = diffusion_losses(out, noised, batch.mask)
        losses = {"lattice": loss_lattice, "coord": loss_coord}
        if self.kind == "dao-p":
            # Masked mean, no boolean indexing: no host sync per step, and a batch without any
            # label gives 0 with the head still in the graph (DDP expects its gradients).
            # Unlabelled entries are zeroed before exp: an inf there would make NaN gradients.
            pred = out.energy.float()
            if batch.energy is None:
                target = torch.full_like(pred, float("nan"))
            else:
                target = (batch.energy.to(pred) - self.label.mean) / self.label.std
            known = torch.isfinite(target)
            pred, target = torch.where(known, pred, 0.0), torch.where(known, target, 0.0)
            if self.label.loss == "exp":  # weights low-energy structures more (authors' choice)
                pred, target = torch.exp(-pred), torch.exp(-target)
            losses["energy"] = (pred - target).square().sum() / known.sum().clamp(min=1)
        losses["total"] = sum(losses.values())
        return losses

    # --- DAO-P energy --------------------------------------------------------------------------

    def energy(
        self, batch: CrystalBatch, t: torch.Tensor | int = CLEAN_STEP, physical: bool = False
    ) -> torch.Tensor:
        """Energy per crystal: standardised, or in label units (``physical=True``)."""
        self._require_energy()
        if isinstance(t, int):
            t = torch.full((batch.batch_size,), t, dtype=torch.long, device=batch.mask.device)
        e = self(batch, t).energy
        return e * self.label.std + self.label.mean if physical else e

    def energy_forces_stress(
        self, batch: CrystalBatch
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Energy per atom (label units), forces (per atom) and stress (3x3, GPa): eV/A and
        GPa for an eV/atom label.

        The label is per atom, so the total energy is N * e; forces are -dE/dr with
        r = X L, and stress is (1/V) L^T dE/dL (symmetrised), the strain derivative at fixed X.
        """
        with torch.enable_grad():
            f = batch.frac.detach().requires_grad_(True)
            lat = batch.lattice.detach().requires_grad_(True)
            e_atom = self.energy(replace(batch, frac=f, lattice=lat), physical=True)
            n_atoms = batch.mask.sum(1).to(e_atom.dtype)
            grad_f, grad_l = torch.autograd.grad((e_atom * n_atoms).sum(), (f, lat))
        # dE/dr = dE/dX . L^{-T}, since X = r L^{-1}.
        forces = -torch.linalg.solve(lat.detach(), grad_f.transpose(1, 2)).transpose(1, 2)
        volume = torch.linalg.det(lat.detach()).abs()
        virial = lat.detach().transpose(1, 2) @ grad_l
        stress = 0.5 * (virial + virial.transpose(1, 2)) / volume[:, None, None]
        return e_atom.detach(), forces * batch.mask[..., None], stress / units.GPa

    def relax(self, batch: CrystalBatch, steps: int = 5, lr: float = 1.0) -> CrystalBatch:
        """L-BFGS on X and L at the clean step (dataset relaxation, method doc section 6).

        Minimising the sum of the crystals' energies relaxes each one (one L-BFGS over the
        batch: its line search and curvature history are shared); X is wrapped back into
        [0, 1) afterwards.
        """
        self._require_energy()
        f = batch.frac.detach().clone().requires_grad_(True)
        lat = batch.lattice.detach().clone().requires_grad_(True)
        opt = torch.optim.LBFGS([f, lat], lr=lr, max_iter=steps, line_search_fn="strong_wolfe")

        def closure() -> torch.Tensor:
            opt.zero_grad()
            e = self.energy(replace(batch, frac=f, lattice=lat)).sum()
            e.backward()
            return e

        with torch.enable_grad():
            opt.step(closure)
        frac = torch.remainder(f.detach(), 1.0) * batch.mask[..., None]
        return replace(batch, frac=frac, lattice=lat.detach())

    # --- DAO-G sampling ------------------------------------------------------------------------

    @torch.no_grad()
    def sample(
        self,
        batch: CrystalBatch,
        steps: int | None = None,
        guidance: DAOModel | None = None,
        scale: float = 0.0,
        generator: torch.Generator | None = None,
        sampling: SamplerSettings | None = None,
        graph: bool | None = None,
        compile: bool = False,
    ) -> CrystalBatch:
        """``batch`` (its compositions; coordinates are ignored) with sampled fractional
        coordinates (B, N, 3) and lattices (B, 3, 3).

        ``sampling=None`` uses the model's own sampler settings (``self.sampling``), and
        ``steps=None`` their number of steps. ``graph`` (default: on CUDA) replays the sampling
        step as a CUDA graph. ``compile`` runs the network through ``torch.compile`` (fused
        elementwise kernels; one compilation per batch shape, so it pays off for long runs of
        large batches, docs/performance.md).
        """

        # bf16 on GPU: the sampler's arithmetic stays in float32, only the networks run in bf16.
        amp = torch.autocast("cuda", torch.bfloat16, enabled=batch.mask.is_cuda)
        net = torch.compile(self.net, dynamic=False, fullgraph=True) if compile else self.net

        def score_fn(
            frac: torch.Tensor, lattice: torch.Tensor, t: torch.Tensor
        ) -> CrysformerOutput:
            with amp:
                out = net(replace(batch, frac=frac, lattice=lattice), t)
            return CrysformerOutput(*(x.float() for x in out))

        energy_fn = None
        if guidance is not None and scale > 0:
            if guidance.schedule.steps != self.schedule.steps:
                # Step indices are the generator's: another T would mean other noise levels.
                raise DAOInputError(
                    f"guidance model {guidance.name} was trained on {guidance.schedule.steps} "
                    f"noise levels, the generator on {self.schedule.steps}"
                )

            def energy_fn(
                frac: torch.Tensor, lattice: torch.Tensor, t: torch.Tensor
            ) -> torch.Tensor:
                with amp:
                    return guidance.energy(replace(batch, frac=frac, lattice=lattice), t).float()

        settings = sampling or self.sampling
        n_steps = settings.steps if steps is None else steps
        check_sampling_steps(n_steps, self.schedule.steps, self.name)
        frac, lattice = sample(
            score_fn, self.schedule, batch.mask, n_steps, settings, energy_fn, scale, generator,
            graph,
        )  # fmt: skip
        return replace(batch, frac=frac, lattice=lattice)

    def _require_energy(self) -> None:
        if self.kind != "dao-p":
            raise ValueError(f"{self.name or 'this model'} is a DAO-G model and has no energy head")
