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

from dao_core.checkpoint import default_device
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


# CHGNet's response to an atom with no neighbour within its cutoff, for every relaxation route
# ("fire", "torch-sim"). "warn", as atomate2's CHGNetCalculator (the per-candidate route) uses:
# generation already rejects candidates with isolated atoms, so this only meets a cell that
# loosens mid-relaxation, which may still come back; a relaxed structure that ends with isolated
# atoms is flagged by the ranking's sanity check. "error" would drop such candidates on one
# route but not the others.
ISOLATED_ATOMS = "warn"
# SevenNet's pretrained model wherever SevenNet runs without one named: the re-ranking's
# default (refine.py) and torch-sim's SevenNet route (torchsim_relax.py). Here because both
# import this module, and refine.py must not need torch-sim, which torchsim_relax.py imports.
SEVENNET_MODEL = "7net-l3i5"


def load_chgnet(device: str | None = None) -> Any:
    """The pretrained CHGNet shipped in the ``chgnet`` wheel, on ``device`` (GPU if any), with
    the :data:`ISOLATED_ATOMS` policy: the one loader of both batched relaxation routes."""
    from chgnet.model import CHGNet

    model = CHGNet.load(verbose=False, use_device=str(default_device(device)))
    model.graph_converter.set_isolated_atom_response(ISOLATED_ATOMS)
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


def frechet_cell_forces(log_deform: torch.Tensor, cell_grad: torch.Tensor) -> torch.Tensor:
    """``C[s, m, n] = sum_ij L(A_s, E_mn)_ij G_s,ij`` for A = ``log_deform`` (S, 3, 3) and
    G = ``cell_grad`` (S, 3, 3), L the Fréchet derivative of expm and E_mn the unit matrices.

    FrechetCellFilter's log-space cell force (before dividing by its exp_cell_factor). The
    contraction is the adjoint derivative ``L(A_sᵀ, G_s)``, the upper-right block of
    ``expm([[Aᵀ, G], [0, Aᵀ]])``: one 6x6 exponential per system instead of nine directional
    derivatives. Pure torch, so both this module and :mod:`dao_flows.frechet_fire` use it.
    """
    a_t = log_deform.mT
    top = torch.cat([a_t, cell_grad], dim=-1)
    bottom = torch.cat([torch.zeros_like(a_t), a_t], dim=-1)
    return torch.matrix_exp(torch.cat([top, bottom], dim=-2))[..., :3, 3:]


def _evaluate(model: Any, graphs: list, batch_size: int) -> list[tuple | str]:
    """:func:`chgnet_efs` of ``graphs`` in chunks of ``batch_size``. A chunk that raises (out of
    memory, a graph CHGNet chokes on) is redone one graph at a time, so only the culprits fail:
    their entry is the error text instead of a prediction."""
    out: list[tuple | str] = []
    for start in range(0, len(graphs), batch_size):
        chunk = graphs[start : start + batch_size]
        try:
            out.extend(chgnet_efs(model, chunk))
            continue
        except Exception:  # noqa: BLE001 - find the culprit one graph at a time
            pass
        for graph in chunk:
            try:
                out.extend(chgnet_efs(model, [graph]))
            except Exception as exc:  # noqa: BLE001 - this structure's failure only
                out.append(f"CHGNet evaluation: {type(exc).__name__}: {exc}")
    return out


def batched_fire_relax(
    structures: Sequence[Structure],
    model: Any = None,
    *,
    fmax: float,
    steps: int,
    relax_cell: bool = True,
    device: str | None = None,
    batch_size: int = 64,
    fire: dict[str, float] | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> tuple[list[BatchRelaxResult], dict[str, Any]]:
    """Relax many structures at once with a vectorised FIRE on CHGNet (positions + cell).

    Structures that converge (max generalised force < ``fmax``) or reach ``steps`` leave the
    batch; the rest continue. A structure whose potential evaluation fails (an exception from
    CHGNet, found by re-evaluating its chunk one structure at a time) or turns non-finite is
    dropped with its error; the others are unaffected. ``fmax`` and ``steps`` have no defaults:
    the Makers (``BatchedRelaxMaker``, ``RefineMaker``) own them.

    Returns the per-structure results and run statistics: ``model_calls`` counts FIRE
    iterations, i.e. rounds in which every still-active structure is evaluated once (each round
    is ceil(active / ``batch_size``) batched CHGNet passes), plus wall time and device.
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

    def drop(i: int, reason: str) -> None:
        results[i] = BatchRelaxResult(None, None, False, int(nsteps[i]), None, reason)
        active[i] = False

    while bool(active.any()):
        idx = torch.nonzero(active).flatten()
        log_f = cellx[idx] / ecf[idx, None, None]
        if relax_cell:
            deform = torch.linalg.matrix_exp(log_f)
        else:
            deform = torch.eye(3, dtype=dtype).expand(len(idx), 3, 3)
        cell = orig_cell[idx] @ deform.transpose(1, 2)  # rows = lattice vectors
        cart = pos[idx] @ deform.transpose(1, 2)

        # Potential evaluation for the whole active set (graph building per structure so one
        # pathological structure cannot take the batch down).
        graphs, keep, current = [], [], []
        for j, i in enumerate(idx.tolist()):
            per_atom = abs(float(torch.linalg.det(cell[j]))) / natoms[i]
            if not MIN_VOLUME_PER_ATOM <= per_atom <= MAX_VOLUME_PER_ATOM:
                # A collapsing cell makes the potential's neighbour graph explode (GBs, minutes).
                drop(i, f"cell left {MIN_VOLUME_PER_ATOM}-{MAX_VOLUME_PER_ATOM} A^3/atom "
                        f"({per_atom:.1f}) at step {int(nsteps[i])}")  # fmt: skip
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
                drop(i, f"graph construction failed: {exc}")
        if not graphs:
            continue
        preds = _evaluate(model, graphs, batch_size)
        model_calls += 1  # one FIRE iteration (see the docstring)

        # Generalised forces: positions (atoms_forces @ F) and, batched, the cell's.
        evaluated, g_atoms, cell_grads = [], [], []
        for k, j in enumerate(keep):
            i = int(idx[j])
            if isinstance(preds[k], str):
                drop(i, f"{preds[k]} (step {int(nsteps[i])})")
                continue
            e, f_np, s_np = preds[k]
            forces = torch.as_tensor(np.asarray(f_np), dtype=dtype)
            # CHGNet stresses come in GPa
            stress = torch.as_tensor(np.asarray(s_np), dtype=dtype) * units.GPa
            finite = torch.isfinite(forces).all() and torch.isfinite(stress).all()
            if not (np.isfinite(e) and finite):
                drop(i, f"non-finite energy/forces/stress at step {int(nsteps[i])}")
                continue
            energies[i].append(e)
            gp = torch.zeros(nmax, 3, dtype=dtype)
            gp[: natoms[i]] = forces @ deform[j]  # FrechetCellFilter: atoms_forces @ F
            virial = -abs(float(torch.linalg.det(cell[j]))) * stress
            cell_grads.append(virial @ torch.linalg.inv(deform[j].T))
            evaluated.append((k, j, i, e))
            g_atoms.append(gp)
        if not evaluated:
            continue
        js = torch.as_tensor([j for _, j, _, _ in evaluated])
        ecf_e = ecf[torch.as_tensor([i for _, _, i, _ in evaluated]), None, None]
        if relax_cell:  # FrechetCellFilter's cell force: Fréchet contraction / exp_cell_factor
            g_cells = frechet_cell_forces(log_f[js], torch.stack(cell_grads)) / ecf_e
        else:
            g_cells = torch.zeros(len(evaluated), 3, 3, dtype=dtype)

        step_idx, g_pos, g_cell = [], [], []
        for (k, _, i, e), gp, gc in zip(evaluated, g_atoms, g_cells, strict=True):
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
