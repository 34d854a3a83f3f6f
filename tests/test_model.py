"""Crysformer symmetries: O(3) on the lattice, atom permutations, periodic shifts, padding."""

from dataclasses import replace

import pytest
import torch

from dao_core.data import CrystalBatch
from dao_core.elements import N_FEATURES, element_table
from dao_core.model import Crysformer, CrysformerConfig, GatedResidual

TOL = 1e-9  # float64 throughout: symmetries must hold to round-off


@pytest.fixture(scope="module", params=["learned", "descriptors"])
def net(request: pytest.FixtureRequest) -> Crysformer:
    torch.manual_seed(0)
    return Crysformer(CrysformerConfig.preset("tiny", request.param)).double().eval()


@pytest.fixture(scope="module")
def crystal() -> tuple[CrystalBatch, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    b, n = 3, 7
    mask = torch.ones(b, n, dtype=torch.bool)
    mask[1, 5:] = False
    atom_types = torch.randint(1, 90, (b, n), generator=g) * mask
    frac = torch.rand(b, n, 3, generator=g, dtype=torch.float64)
    lattice = 4 * torch.eye(3, dtype=torch.float64) + torch.randn(b, 3, 3, generator=g).double()
    t = torch.tensor([1, 500, 1000])
    return CrystalBatch(atom_types, frac, lattice, mask), t


def random_orthogonal(seed: int) -> torch.Tensor:
    q, _ = torch.linalg.qr(
        torch.randn(3, 3, generator=torch.Generator().manual_seed(seed)).double()
    )
    return q


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_rotation_and_reflection(net: Crysformer, crystal: tuple, seed: int) -> None:
    q = random_orthogonal(seed)
    if seed == 2:  # include an improper rotation (reflection)
        q = q @ torch.diag(torch.tensor([1.0, 1.0, -1.0], dtype=torch.float64))
    batch, t = crystal
    ref = net(batch, t)
    rot = net(replace(batch, lattice=batch.lattice @ q.T), t)
    torch.testing.assert_close(rot.coord, ref.coord, atol=TOL, rtol=0)
    torch.testing.assert_close(rot.energy, ref.energy, atol=TOL, rtol=0)
    # The lattice output rotates with L: eps(L Q^T) = eps(L) Q^T.
    torch.testing.assert_close(rot.lattice, ref.lattice @ q.T, atol=TOL, rtol=0)


def test_permutation(net: Crysformer, crystal: tuple) -> None:
    batch, t = crystal
    perm = torch.randperm(batch.frac.shape[1], generator=torch.Generator().manual_seed(3))
    permuted = replace(
        batch,
        atom_types=batch.atom_types[:, perm],
        frac=batch.frac[:, perm],
        mask=batch.mask[:, perm],
    )
    ref, out = net(batch, t), net(permuted, t)
    torch.testing.assert_close(out.coord, ref.coord[:, perm], atol=TOL, rtol=0)
    torch.testing.assert_close(out.energy, ref.energy, atol=TOL, rtol=0)
    torch.testing.assert_close(out.lattice, ref.lattice, atol=TOL, rtol=0)


def test_periodic_translation(net: Crysformer, crystal: tuple) -> None:
    batch, t = crystal
    shift = torch.tensor([0.37, -0.81, 2.25], dtype=torch.float64)
    moved = replace(batch, frac=torch.remainder(batch.frac + shift, 1.0))
    ref, out = net(batch, t), net(moved, t)
    # Fourier features are periodic, so wrapping changes only round-off.
    torch.testing.assert_close(out.coord, ref.coord, atol=1e-8, rtol=0)
    torch.testing.assert_close(out.energy, ref.energy, atol=1e-8, rtol=0)
    torch.testing.assert_close(out.lattice, ref.lattice, atol=1e-8, rtol=0)


def test_padding_does_not_leak(net: Crysformer, crystal: tuple) -> None:
    """Crystal 1 has 5 real atoms; the same crystal alone, unpadded, gives the same outputs."""
    batch, t = crystal
    alone = CrystalBatch(
        batch.atom_types[1:2, :5], batch.frac[1:2, :5], batch.lattice[1:2], batch.mask[1:2, :5]
    )
    ref, out = net(batch, t), net(alone, t[1:2])
    torch.testing.assert_close(out.coord[0], ref.coord[1, :5], atol=TOL, rtol=0)
    torch.testing.assert_close(out.energy[0], ref.energy[1], atol=TOL, rtol=0)
    assert torch.all(ref.coord[1, 5:] == 0)


def test_paper_preset_size() -> None:
    """The paper preset is the authors' 384-wide, 12-layer, 8-head model (~25.6 M parameters)."""
    cfg = CrysformerConfig.preset("paper")
    assert (cfg.hidden, cfg.layers, cfg.heads, cfg.fourier) == (384, 12, 8, 128)
    params = sum(p.numel() for p in Crysformer(cfg).parameters())
    assert 24e6 < params < 27e6


def test_element_descriptors_are_chemical() -> None:
    """Fixed descriptors: padding is zero, every element finite, the table exact in float16
    (checkpoints ship fp16), and chemical neighbours closer than unlike elements."""
    table = element_table(100)
    assert table.shape == (101, N_FEATURES) and torch.all(table[0] == 0)
    assert torch.isfinite(table).all() and torch.equal(table, table.half().float())

    def dist(a: int, b: int) -> float:
        return float((table[a] - table[b]).norm())

    assert dist(11, 19) < dist(11, 17)  # Na-K < Na-Cl
    assert dist(29, 47) < dist(29, 9)  # Cu-Ag < Cu-F
    assert dist(14, 32) < dist(14, 56)  # Si-Ge < Si-Ba
    with pytest.raises(ValueError, match="element encoding"):
        Crysformer(CrysformerConfig.preset("tiny", "one-hot"))


def test_gated_residual_is_the_concatenated_gate() -> None:
    """The gate split into per-input weights equals sigmoid(w.[h, h', h - h'] + b) mixing, values
    and gradients, in float64."""
    torch.manual_seed(3)
    res = GatedResidual(16).double()
    h, update = torch.randn(2, 5, 16, dtype=torch.float64, requires_grad=True).unbind(0)
    g = torch.sigmoid(res.gate(torch.cat([h, update, h - update], dim=-1)))
    expected = g * h + (1 - g) * update
    out = res(h, update)
    assert torch.allclose(out, expected, atol=TOL)
    grad = torch.autograd.grad(out.square().sum(), res.gate.weight)[0]
    assert torch.allclose(grad, torch.autograd.grad(expected.square().sum(), res.gate.weight)[0])
