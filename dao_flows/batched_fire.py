"""Batched FIRE relaxation of many structures at once on CHGNet (positions + cell).

Reproduces ASE's ``FIRE`` on a ``FrechetCellFilter`` (what atomate2's force-field relaxation
uses) step for step: same generalised coordinates (positions in the undeformed cell + N log F of
the deformation gradient F), same generalised forces, same FIRE constants and the same
convergence test (max row norm of the generalised forces < fmax). The expensive part, the
potential's energies/forces/stresses, is evaluated for all unconverged structures in one
batched CHGNet call, on the GPU when there is one.

Depends on torch, numpy, pymatgen, chgnet and dao_core only (no jobflow/atomate2), so it can run
anywhere CHGNet runs.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from ase import units
from pymatgen.core import Lattice, Structure

from dao_core.data import right_handed_structure

# ASE FIRE defaults (ase.optimize.FIRE), kept identical so both routes agree.
FIRE_DEFAULTS: dict[str, float] = dict(
    dt=0.1, maxstep=0.2, dtmax=1.0, Nmin=5, finc=1.1, fdec=0.5, astart=0.1, fa=0.99, a=0.1
)


@dataclass
class BatchRelaxResult:
    """Outcome of relaxing one structure in :func:`batched_fire_relax`."""

    structure: Structure | None
    energy_per_atom: float | None
    converged: bool
    n_steps: int
    max_force: float | None
    error: str | None = None
    energies: list[float] = field(default_factory=list)  # eV/atom at every evaluation


# Per-atom volume window outside which a structure is hopeless and, worse, a dense cell can
# make an ML potential's neighbour graph explode (minutes and GBs for one structure).
MIN_VOLUME_PER_ATOM = 2.0
MAX_VOLUME_PER_ATOM = 500.0


def load_chgnet(device: str | None = None) -> Any:
    """The pretrained CHGNet shipped in the ``chgnet`` wheel, on ``device`` (GPU if any)."""
    from chgnet.model import CHGNet

    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    model = CHGNet.load(verbose=False, use_device=device)
    # As CHGNetCalculator (the per-candidate route) does: warn, don't fail, on isolated atoms.
    model.graph_converter.set_isolated_atom_response("warn")
    return model


def chgnet_efs(model: Any, graphs: list) -> list[tuple[float, np.ndarray, np.ndarray]]:
    """(energy eV/atom, forces eV/Å, stress GPa) for each graph, in one batched CHGNet pass.

    Same numbers as ``model.predict_graph(graphs, task="efs")`` (CHGNet's own formulas: forces
    and stress are gradients of the total energy w.r.t. positions and strain), but with ONE
    backward pass over positions and strains together and no ``create_graph`` (CHGNet keeps
    the double-backward graph, which inference does not need): about half the GPU time.
    Falls back to ``predict_graph`` if CHGNet's internals differ from what this expects.
    """
    try:
        from chgnet.model.model import BatchedGraph

        device = next(model.parameters()).device
        model.eval()
        graphs = [g.to(device) for g in graphs]
        comp = 0 if model.composition_model is None else model.composition_model(graphs)
        bg = BatchedGraph.from_graphs(
            graphs,
            bond_basis_expansion=model.bond_basis_expansion,
            angle_basis_expansion=model.angle_basis_expansion,
            compute_stress=True,
        )
        pred = model._compute(bg, compute_force=False, compute_stress=False)
        e = pred["e"]
        # Gradients of the TOTAL energy (what CHGNet differentiates); e is per atom if intensive.
        total = e * pred["atoms_per_graph"] if model.is_intensive else e
        n = len(graphs)
        grads = torch.autograd.grad(total.sum(), [*bg.atom_positions, *bg.strains])
        scale = 1 / (units.GPa * bg.volumes)  # eV/Å^3 -> GPa, as CHGNet
        forces = torch.cat([-g for g in grads[:n]]).detach().cpu().numpy()
        stress = torch.stack([g * s for g, s in zip(grads[n:], scale, strict=True)])
        stress = stress.detach().cpu().numpy()
        energies = (e + comp).detach().cpu().numpy()
    except (ImportError, AttributeError, TypeError, KeyError):
        preds = model.predict_graph(graphs, task="efs", batch_size=max(1, len(graphs)))
        preds = [preds] if isinstance(preds, dict) else preds
        return [(float(np.asarray(p["e"]).reshape(-1)[0]), p["f"], p["s"]) for p in preds]
    out, start = [], 0
    for i, g in enumerate(graphs):
        k = int(g.atomic_number.shape[0])
        out.append((float(energies[i]), forces[start : start + k], stress[i]))
        start += k
    return out


def _expm_and_frechet(log_f: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """exp(A) and all 9 Fréchet derivatives L(A, E_mn) for a batch of 3x3 matrices A.

    Uses the block identity expm([[A, E], [0, A]]) = [[e^A, L(A, E)], [0, e^A]], so one batched
    matrix_exp replaces 9 scipy ``expm_frechet`` calls per structure.
    """
    b = log_f.shape[0]
    eye9 = torch.eye(9, dtype=log_f.dtype, device=log_f.device).view(9, 3, 3)
    block = torch.zeros(b, 9, 6, 6, dtype=log_f.dtype, device=log_f.device)
    block[:, :, :3, :3] = log_f[:, None]
    block[:, :, 3:, 3:] = log_f[:, None]
    block[:, :, :3, 3:] = eye9[None]
    out = torch.linalg.matrix_exp(block)
    return out[:, 0, :3, :3], out[:, :, :3, 3:]  # (B,3,3), (B,9,3,3)


def batched_fire_relax(
    structures: Sequence[Structure],
    model: Any = None,
    *,
    fmax: float = 0.05,
    steps: int = 500,
    relax_cell: bool = True,
    device: str | None = None,
    batch_size: int = 64,
    fire: dict[str, float] | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> tuple[list[BatchRelaxResult], dict[str, Any]]:
    """Relax many structures at once with a vectorised FIRE on CHGNet (positions + cell).

    Structures that converge (max generalised force < ``fmax``) or reach ``steps`` leave the
    batch; the rest continue. A structure whose potential evaluation fails or turns non-finite
    is dropped with its error; the others are unaffected.

    Returns the per-structure results and run statistics (model calls, wall time, device).
    """
    p = {**FIRE_DEFAULTS, **(fire or {})}
    # CHGNet's stress changes sign with the cell's handedness: relax right-handed cells only.
    structures = [right_handed_structure(s) for s in structures]
    model = model if model is not None else load_chgnet(device)
    model_device = str(next(model.parameters()).device)
    started = time.perf_counter()
    n = len(structures)
    results: list[BatchRelaxResult | None] = [None] * n
    if n == 0:
        return [], {"model_calls": 0, "elapsed_s": 0.0, "device": model_device}

    dtype = torch.float64
    natoms = np.array([len(s) for s in structures])
    nmax = int(natoms.max())
    mask = torch.zeros(n, nmax, dtype=torch.bool)
    pos = torch.zeros(n, nmax, 3, dtype=dtype)  # positions in the undeformed cell
    for i, s in enumerate(structures):
        mask[i, : natoms[i]] = True
        pos[i, : natoms[i]] = torch.tensor(s.cart_coords, dtype=dtype)
    orig_cell = torch.stack([torch.tensor(s.lattice.matrix, dtype=dtype) for s in structures])
    ecf = torch.as_tensor(natoms, dtype=dtype)  # FrechetCellFilter's exp_cell_factor = N
    cellx = torch.zeros(n, 3, 3, dtype=dtype)  # ecf * log(F); F = I at the start
    species = [list(s.species) for s in structures]
    for i, s in enumerate(structures):
        if not (np.isfinite(s.lattice.matrix).all() and np.isfinite(s.cart_coords).all()):
            results[i] = BatchRelaxResult(None, None, False, 0, None, "non-finite input structure")

    vel_p = torch.zeros_like(pos)
    vel_c = torch.zeros_like(cellx)
    dt = torch.full((n,), p["dt"], dtype=dtype)
    alpha = torch.full((n,), p["a"], dtype=dtype)
    n_pos = torch.zeros(n, dtype=torch.long)  # FIRE's Nsteps (steps since last reset)
    nsteps = torch.zeros(n, dtype=torch.long)
    started_fire = torch.zeros(n, dtype=torch.bool)
    active = torch.tensor([r is None for r in results], dtype=torch.bool)
    energies: list[list[float]] = [[] for _ in range(n)]
    model_calls = 0

    while bool(active.any()):
        idx = torch.nonzero(active).flatten()
        log_f = cellx[idx] / ecf[idx, None, None]
        if relax_cell:
            deform, frechet = _expm_and_frechet(log_f)
        else:
            deform, frechet = torch.eye(3, dtype=dtype).expand(len(idx), 3, 3), None
        cell = orig_cell[idx] @ deform.transpose(1, 2)  # rows = lattice vectors
        cart = pos[idx] @ deform.transpose(1, 2)

        # Potential evaluation for the whole active set (graph building per structure so one
        # pathological structure cannot take the batch down).
        graphs, keep, current = [], [], []
        for j, i in enumerate(idx.tolist()):
            per_atom = abs(float(torch.linalg.det(cell[j]))) / natoms[i]
            if not MIN_VOLUME_PER_ATOM <= per_atom <= MAX_VOLUME_PER_ATOM:
                # A collapsing cell makes the potential's neighbour graph explode (GBs, minutes).
                results[i] = BatchRelaxResult(
                    None, None, False, int(nsteps[i]), None,
                    f"cell left {MIN_VOLUME_PER_ATOM}-{MAX_VOLUME_PER_ATOM} A^3/atom "
                    f"({per_atom:.1f}) at step {int(nsteps[i])}",
                )  # fmt: skip
                active[i] = False
                continue
            try:
                s = Structure(
                    Lattice(cell[j].numpy()),
                    species[i],
                    cart[j, : natoms[i]].numpy(),
                    coords_are_cartesian=True,
                )
                graphs.append(model.graph_converter(s))
                keep.append(j)
                current.append(s)
            except Exception as exc:  # noqa: BLE001
                results[i] = BatchRelaxResult(
                    None, None, False, int(nsteps[i]), None, f"graph construction failed: {exc}"
                )
                active[i] = False
        if not graphs:
            continue
        preds = []
        for start in range(0, len(graphs), batch_size):
            preds.extend(chgnet_efs(model, graphs[start : start + batch_size]))
        model_calls += 1

        step_idx, g_pos, g_cell = [], [], []
        for k, j in enumerate(keep):
            i = int(idx[j])
            e, f_np, s_np = preds[k]
            forces = torch.as_tensor(np.asarray(f_np), dtype=dtype)
            # CHGNet stresses come in GPa
            stress = torch.as_tensor(np.asarray(s_np), dtype=dtype) * units.GPa
            finite = torch.isfinite(forces).all() and torch.isfinite(stress).all()
            if not (np.isfinite(e) and finite):
                results[i] = BatchRelaxResult(
                    None,
                    None,
                    False,
                    int(nsteps[i]),
                    None,
                    f"non-finite energy/forces/stress at step {int(nsteps[i])}",
                )
                active[i] = False
                continue
            energies[i].append(e)
            f_dg = deform[j]
            gp = torch.zeros(nmax, 3, dtype=dtype)
            gp[: natoms[i]] = forces @ f_dg  # FrechetCellFilter: atoms_forces @ F
            if relax_cell:
                volume = abs(float(torch.linalg.det(cell[j])))
                virial = -volume * stress
                ucf_grad = virial @ torch.linalg.inv(f_dg.T)
                gc = (frechet[j] * ucf_grad).sum(dim=(-1, -2)).view(3, 3) / ecf[i]
            else:
                gc = torch.zeros(3, 3, dtype=dtype)
            fnorm = max(float(gp[: natoms[i]].norm(dim=1).max()), float(gc.norm(dim=1).max()))
            converged = fnorm < fmax
            if converged or int(nsteps[i]) >= steps:
                results[i] = BatchRelaxResult(
                    current[k], e, converged, int(nsteps[i]), fnorm, None, energies[i]
                )
                active[i] = False
                continue
            step_idx.append(i)
            g_pos.append(gp)
            g_cell.append(gc)

        if progress is not None:
            progress(int((~active).sum()), n)
        if not step_idx:
            continue

        # Vectorised FIRE step (ase.optimize.FIRE.step) for every structure still moving.
        si = torch.as_tensor(step_idx)
        gp_t = torch.stack(g_pos)
        gc_t = torch.stack(g_cell)
        vp, vc = vel_p[si], vel_c[si]
        vf = (gp_t * vp).sum((1, 2)) + (gc_t * vc).sum((1, 2))
        g2 = (gp_t**2).sum((1, 2)) + (gc_t**2).sum((1, 2))
        v2 = (vp**2).sum((1, 2)) + (vc**2).sum((1, 2))
        first = ~started_fire[si]
        downhill = (vf > 0) & ~first
        uphill = ~downhill & ~first
        mix = (alpha[si] * v2.sqrt() / g2.clamp_min(1e-300).sqrt())[:, None, None]
        one_minus_a = (1 - alpha[si])[:, None, None]
        d3 = downhill[:, None, None]
        vp = torch.where(d3, one_minus_a * vp + mix * gp_t, vp)
        vc = torch.where(d3, one_minus_a * vc + mix * gc_t, vc)
        grow = downhill & (n_pos[si] > p["Nmin"])
        dt_new = torch.where(grow, torch.clamp(dt[si] * p["finc"], max=p["dtmax"]), dt[si])
        a_new = torch.where(grow, alpha[si] * p["fa"], alpha[si])
        n_new = torch.where(downhill, n_pos[si] + 1, n_pos[si])
        u3 = uphill[:, None, None]
        vp = torch.where(u3, torch.zeros_like(vp), vp)
        vc = torch.where(u3, torch.zeros_like(vc), vc)
        a_new = torch.where(uphill, torch.full_like(a_new, p["astart"]), a_new)
        dt_new = torch.where(uphill, dt_new * p["fdec"], dt_new)
        n_new = torch.where(uphill, torch.zeros_like(n_new), n_new)

        vp = vp + dt_new[:, None, None] * gp_t
        vc = vc + dt_new[:, None, None] * gc_t
        drp, drc = dt_new[:, None, None] * vp, dt_new[:, None, None] * vc
        norm = ((drp**2).sum((1, 2)) + (drc**2).sum((1, 2))).sqrt()
        scale = torch.where(norm > p["maxstep"], p["maxstep"] / norm.clamp_min(1e-300), 1.0)
        pos[si] += drp * scale[:, None, None] * mask[si][..., None]
        if relax_cell:
            cellx[si] += drc * scale[:, None, None]
        vel_p[si], vel_c[si] = vp, vc
        dt[si], alpha[si], n_pos[si] = dt_new, a_new, n_new
        started_fire[si] = True
        nsteps[si] += 1

    stats = {
        "model_calls": model_calls,
        "elapsed_s": time.perf_counter() - started,
        "device": model_device,
    }
    return [r for r in results if r is not None], stats  # type: ignore[misc]
