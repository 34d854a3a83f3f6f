"""batched_fire_relax on real CHGNet (CPU): failures stay per structure, the cell force is the
Fréchet contraction, one CHGNet loader and isolated-atom policy, required relax settings."""

from __future__ import annotations

import os
import warnings
from typing import Any

import pytest
import torch
from pymatgen.core import Lattice, Structure

pytest.importorskip("chgnet", reason="chgnet not installed")

from csp_inputs import caesium_chloride, primitive_rocksalt  # noqa: E402

import dao_flows.batched_fire as bf  # noqa: E402

os.environ.setdefault("OMP_NUM_THREADS", "1")
FMAX, STEPS = 0.05, 200
MARKER_ATOMS = 1  # the injected failure hits the chunk holding the one-atom structure


def copper() -> Structure:
    """fcc Cu, one atom: the marked structure."""
    return Structure(Lattice.from_parameters(2.6, 2.6, 2.6, 60, 60, 60), ["Cu"], [[0, 0, 0]])


@pytest.fixture(scope="module")
def chgnet() -> Any:
    torch.set_num_threads(1)
    warnings.filterwarnings("ignore")
    return bf.load_chgnet("cpu")


def test_failing_evaluation_fails_only_its_structure(chgnet, monkeypatch) -> None:
    """CHGNet raising for one structure's chunk (batch_size 2: [NaCl, Cu], [CsCl]) fails that
    structure alone, with the error text; the others relax to the energies of a clean run."""
    starts = [primitive_rocksalt(5.8), copper(), caesium_chloride(4.3)]
    clean, stats = bf.batched_fire_relax(starts, chgnet, fmax=FMAX, steps=STEPS, batch_size=2)
    assert all(r.error is None and r.converged for r in clean)
    # model_calls counts FIRE iterations: each structure is evaluated once per iteration.
    assert all(len(r.energies) == r.n_steps + 1 for r in clean)
    assert stats["model_calls"] == max(len(r.energies) for r in clean)

    real = bf.chgnet_efs

    def flaky(model: Any, graphs: list) -> list:
        if any(int(g.atomic_number.shape[0]) == MARKER_ATOMS for g in graphs):
            raise RuntimeError("CUDA out of memory (injected)")
        return real(model, graphs)

    monkeypatch.setattr(bf, "chgnet_efs", flaky)
    got, _ = bf.batched_fire_relax(starts, chgnet, fmax=FMAX, steps=STEPS, batch_size=2)
    for i in (0, 2):
        assert got[i].error is None and got[i].converged and got[i].n_steps > 0
        assert abs(got[i].energy_per_atom - clean[i].energy_per_atom) < 1e-6
    bad = got[1]
    assert bad.structure is None and bad.energy_per_atom is None and not bad.converged
    assert bad.error == "CHGNet evaluation: RuntimeError: CUDA out of memory (injected) (step 0)"


def test_frechet_cell_forces_equal_the_nine_block_derivatives() -> None:
    """The adjoint contraction (one 6x6 exponential) gives the old path's cell forces: all nine
    L(A, E_mn) from expm([[A, E_mn], [0, A]]) contracted with G, divided by N (float64)."""
    torch.manual_seed(0)
    logs = 0.1 * torch.randn(4, 3, 3, dtype=torch.float64)
    grads = torch.randn(4, 3, 3, dtype=torch.float64)
    ecf = torch.tensor([1.0, 2.0, 8.0, 40.0], dtype=torch.float64)[:, None, None]
    block = torch.zeros(4, 9, 6, 6, dtype=torch.float64)
    block[:, :, :3, :3] = block[:, :, 3:, 3:] = logs[:, None]
    block[:, :, :3, 3:] = torch.eye(9, dtype=torch.float64).view(9, 3, 3)
    frechet = torch.linalg.matrix_exp(block)[:, :, :3, 3:]
    old = (frechet * grads[:, None]).sum(dim=(-1, -2)).view(4, 3, 3) / ecf
    new = bf.frechet_cell_forces(logs, grads) / ecf
    assert (new - old).abs().max() < 1e-10
    assert old.abs().max() > 0.1  # not a trivial comparison


def test_relax_settings_are_required(chgnet) -> None:
    """fmax and steps have no defaults in the free functions: the Makers own them."""
    with pytest.raises(TypeError, match="'fmax' and 'steps'"):
        bf.batched_fire_relax([primitive_rocksalt(5.8)], chgnet)  # type: ignore[call-arg]
    pytest.importorskip("torch_sim")
    from dao_flows.torchsim_relax import torchsim_relax

    with pytest.raises(TypeError, match="'fmax' and 'steps'"):
        torchsim_relax([primitive_rocksalt(5.8)], model=chgnet)  # type: ignore[call-arg]


def test_both_routes_treat_isolated_atoms_alike(chgnet) -> None:
    """One loader, one policy ("warn"): a cell whose atoms have no neighbour within CHGNet's
    6 Å (428 Å^3/atom, inside the volume window) is evaluated, not dropped, by the hand-written
    FIRE and by torch-sim, to the same energy."""
    pytest.importorskip("torch_sim")
    from dao_flows.torchsim_relax import CHGNetTorchSimModel, torchsim_relax

    loose = Structure(Lattice.cubic(9.5), ["Na", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]])
    assert chgnet.graph_converter.on_isolated_atoms == bf.ISOLATED_ATOMS == "warn"
    assert CHGNetTorchSimModel(chgnet, device="cpu").on_isolated_atoms == "warn"
    (fire,), _ = bf.batched_fire_relax([loose], chgnet, fmax=FMAX, steps=5)
    (ts_r,), _ = torchsim_relax([loose], fmax=FMAX, steps=5, device="cpu", model=chgnet)
    assert fire.error is None and ts_r.error is None
    assert abs(fire.energy_per_atom - ts_r.energy_per_atom) < 1e-5
