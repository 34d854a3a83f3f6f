"""The batched Fréchet-filter FIRE step equals torch-sim's (which loops over systems)."""

import pytest
import torch

ts = pytest.importorskip("torch_sim")

from ase.build import bulk  # noqa: E402
from torch_sim.math import expm_frechet  # noqa: E402
from torch_sim.models.lennard_jones import LennardJonesModel  # noqa: E402

from dao_flows.frechet_fire import frechet_cell_fire, frechet_cell_forces  # noqa: E402


def test_cell_forces_equal_the_nine_directional_derivatives() -> None:
    torch.manual_seed(0)
    logs = 0.1 * torch.randn(5, 3, 3, dtype=torch.float64)
    grads = torch.randn(5, 3, 3, dtype=torch.float64)
    loop = torch.stack([
        torch.stack([
            (expm_frechet(a, e.reshape(3, 3), compute_expm=False) * g).sum()
            for e in torch.eye(9, dtype=torch.float64)
        ]).reshape(3, 3)
        for a, g in zip(logs, grads, strict=True)
    ])  # fmt: skip
    torch.testing.assert_close(frechet_cell_forces(logs, grads), loop, rtol=1e-10, atol=1e-12)


def test_step_equals_torch_sims_step() -> None:
    """Eight steps of three strained, rattled argon cells of different sizes (Lennard-Jones):
    the same positions, cells, forces and FIRE state as torch-sim's own Fréchet FIRE."""
    atoms = []
    for i, (reps, strain) in enumerate([(1, 0.97), (2, 1.04), (1, 1.02)]):
        a = bulk("Ar", "fcc", a=5.26, cubic=True).repeat(reps)
        a.set_cell(a.cell[:] @ (strain * torch.eye(3).numpy() + 0.02 * (i + 1) * 0.1),
                   scale_atoms=True)  # fmt: skip
        a.rattle(0.05, seed=i)
        atoms.append(a)
    model = LennardJonesModel(sigma=3.405, epsilon=0.0104, cutoff=8.5, dtype=torch.float64,
                              compute_stress=True)  # fmt: skip
    state = ts.io.atoms_to_state(atoms, torch.device("cpu"), torch.float64)
    init_ref, step_ref = ts.frechet_cell_fire(model=model, md_flavor="ase_fire")
    init_new, step_new = frechet_cell_fire(model)
    ref, new = init_ref(state.clone()), init_new(state.clone())
    for _ in range(8):
        ref, new = step_ref(ref), step_new(new)
        for name in ("positions", "cell", "forces", "cell_forces", "velocities", "dt", "alpha"):
            torch.testing.assert_close(getattr(new, name), getattr(ref, name), rtol=1e-8,
                                       atol=1e-10, msg=name)  # fmt: skip
        assert torch.equal(new.n_pos, ref.n_pos)
    assert (ref.energy < init_ref(state.clone()).energy).all()  # it relaxes
