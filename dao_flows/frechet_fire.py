"""torch-sim's ASE-flavour FIRE step on the Fréchet cell filter, with every system's cell
forces from one batched matrix exponential.

torch-sim 0.3.0 (``_ase_fire_step``, ``is_frechet=True``) turns the virial into log-space cell
forces with a Python loop over systems, nine scalar ``expm_frechet`` calls each: on an H100
that loop cost ~14 ms per system per step, 2.8 s a step for 200 CsV3Sb5 candidates, far more
than the potential (docs/performance.md). The cell force is a contraction of the Fréchet
derivative of the matrix exponential, ``C_mn = <L(A, E_mn), G>``, i.e. the adjoint derivative
applied to G, which for ``exp`` is ``L(Aᵀ, G)``: the upper-right block of
``exp([[Aᵀ, G], [0, Aᵀ]])`` (:func:`dao_flows.batched_fire.frechet_cell_forces`, shared with
the hand-written FIRE). :func:`frechet_fire_step` is torch-sim's step with that one change
(and the first step of a freshly loaded system decided per system, as ASE does, instead of for
the whole batch); ``tests/test_frechet_fire.py`` checks it against torch-sim's step.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import torch
import torch_sim as ts
from torch_sim.math import batched_vdot
from torch_sim.models.interface import ModelInterface
from torch_sim.optimizers import FrechetCellFIREState

# Shared with the hand-written FIRE, which must not need torch-sim.
from dao_flows.batched_fire import frechet_cell_forces


def frechet_fire_step(
    state: FrechetCellFIREState,
    model: ModelInterface,
    *,
    dt_max: torch.Tensor,
    n_min: torch.Tensor,
    f_inc: torch.Tensor,
    f_dec: torch.Tensor,
    alpha_start: torch.Tensor,
    f_alpha: torch.Tensor,
    max_step: torch.Tensor,
    eps: float,
) -> FrechetCellFIREState:
    """One ASE-flavour FIRE step of positions and log-space cell (torch-sim's update order and
    parameters), with no Python loop over systems and no host synchronisation."""
    n = state.n_systems
    sys = state.system_idx
    deform = state.deform_grad()  # (S, 3, 3)
    forces = torch.bmm(state.forces.unsqueeze(1), deform[sys]).squeeze(1)

    # A system's first step (velocities NaN after init) starts from rest and skips the mixing.
    nan_atoms = state.velocities.isnan().any(dim=1).to(forces.dtype)
    fresh = torch.zeros(n, dtype=forces.dtype, device=sys.device).index_add_(0, sys, nan_atoms) > 0
    state.velocities = torch.where(fresh[sys, None], 0.0, state.velocities)
    state.cell_velocities = torch.where(fresh[:, None, None], 0.0, state.cell_velocities)

    power = batched_vdot(forces, state.velocities, sys)
    power = power + (state.cell_forces * state.cell_velocities).sum(dim=(1, 2))
    uphill = ~fresh & (power <= 0.0)
    downhill = ~fresh & (power > 0.0)
    grow = downhill & (state.n_pos > n_min)
    state.dt = torch.where(grow, torch.minimum(state.dt * f_inc, dt_max), state.dt)
    state.alpha = torch.where(grow, state.alpha * f_alpha, state.alpha)
    state.n_pos = torch.where(downhill, state.n_pos + 1, state.n_pos)
    state.dt = torch.where(uphill, state.dt * f_dec, state.dt)
    state.alpha = torch.where(uphill, alpha_start, state.alpha)
    state.n_pos = torch.where(uphill, 0, state.n_pos)

    # Velocity mixing before the acceleration (ASE's order); zeroed when going uphill.
    v_norm = (batched_vdot(state.velocities, state.velocities, sys)
              + state.cell_velocities.pow(2).sum(dim=(1, 2))).sqrt()  # fmt: skip
    f_norm = (batched_vdot(forces, forces, sys)
              + state.cell_forces.pow(2).sum(dim=(1, 2))).sqrt()  # fmt: skip
    mix = (v_norm / (f_norm + eps))[:, None, None]
    alpha = state.alpha[:, None, None]
    cell_v = (1 - alpha) * state.cell_velocities + alpha * state.cell_forces * mix
    atom_v = (1 - alpha[sys, 0]) * state.velocities + alpha[sys, 0] * forces * mix[sys, 0]
    keep = ~fresh & ~uphill
    state.cell_velocities = torch.where(keep[:, None, None], cell_v, 0.0)
    state.velocities = torch.where(keep[sys, None], atom_v, 0.0)

    # Euler step, the whole system's displacement (atoms and cell) capped at max_step.
    dt = state.dt[:, None, None]
    state.velocities = state.velocities + forces * dt[sys, 0]
    state.cell_velocities = state.cell_velocities + state.cell_forces * dt
    dr_atom = state.velocities * dt[sys, 0]
    dr_cell = state.cell_velocities * dt
    dr_norm = (batched_vdot(dr_atom, dr_atom, sys) + dr_cell.pow(2).sum(dim=(1, 2))).sqrt()
    scale = torch.where(dr_norm > max_step, max_step / (dr_norm + eps), 1.0)[:, None, None]
    dr_atom, dr_cell = dr_atom * scale[sys, 0], dr_cell * scale

    # Positions move in the reference frame; the cell moves in log space.
    reference_pos = torch.linalg.solve(deform[sys], state.positions.unsqueeze(-1)).squeeze(-1)
    state.cell_positions = state.cell_positions + dr_cell
    log_deform = state.cell_positions / (state.cell_factor + eps)
    new_deform = torch.matrix_exp(log_deform)
    state.row_vector_cell = torch.bmm(state.reference_row_vector_cell, new_deform.mT)
    state.positions = torch.bmm((reference_pos + dr_atom).unsqueeze(1), new_deform[sys].mT).squeeze(
        1
    )

    results = model(state)
    state.forces, state.energy, state.stress = (
        results["forces"], results["energy"], results["stress"]
    )  # fmt: skip
    volumes = torch.linalg.det(state.cell).view(n, 1, 1)
    virial = -volumes * (state.stress + state.pressure)
    eye = torch.eye(3, device=virial.device, dtype=virial.dtype)
    if state.hydrostatic_strain:
        virial = torch.diagonal(virial, dim1=1, dim2=2).mean(dim=1)[:, None, None] * eye
    if state.constant_volume:
        virial = virial - torch.diagonal(virial, dim1=1, dim2=2).mean(dim=1)[:, None, None] * eye
    cell_grad = torch.bmm(virial, torch.linalg.inv(new_deform.mT))
    state.cell_forces = frechet_cell_forces(log_deform, cell_grad) / (state.cell_factor + eps)
    return state


def frechet_cell_fire(model: ModelInterface, **kwargs: Any) -> tuple[Callable, Callable]:
    """torch-sim's ``frechet_cell_fire(model, md_flavor="ase_fire", **kwargs)``: its init and
    parameters, with :func:`frechet_fire_step` as the update."""
    init_fn, step = ts.frechet_cell_fire(model=model, md_flavor="ase_fire", **kwargs)
    params = {k: v for k, v in step.keywords.items() if k not in ("is_cell_optimization",
                                                                   "is_frechet")}  # fmt: skip
    return init_fn, functools.partial(frechet_fire_step, **params)
