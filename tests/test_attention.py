"""The factorised Crysformer attention equals the materialised one it replaces.

The reference (tests/materialised.py) builds the (B, N, N, 9 + 6K) edge tensor and projects it
per layer, as the checkpoints were trained; the model computes the same function from per-atom
waves and N x N LayerNorm statistics. Same parameters, so shipped weights load unchanged.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from materialised import materialised_forward

from dao_core.checkpoint import load_model
from dao_core.data import CrystalBatch
from dao_core.model import Crysformer, CrysformerConfig


def random_crystals(
    seed: int, dtype: torch.dtype, b: int = 4, n: int = 9
) -> tuple[CrystalBatch, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    mask = torch.ones(b, n, dtype=torch.bool)
    mask[1, 6:] = False  # padding in two crystals
    mask[3, 2:] = False
    lattice = 3 * torch.eye(3) + 2 * torch.rand(b, 3, 3, generator=g)
    batch = CrystalBatch(
        atom_types=torch.randint(1, 90, (b, n), generator=g) * mask,
        frac=torch.rand(b, n, 3, generator=g).to(dtype),
        lattice=lattice.to(dtype),
        mask=mask,
    )
    return batch, torch.randint(1, 1001, (b,), generator=g)


def relative_error(out: torch.Tensor, ref: torch.Tensor) -> float:
    return float((out - ref).norm() / ref.norm())


def randomise_norm(net: Crysformer, seed: int) -> None:
    """Trained LayerNorm affines are not (1, 0); test with arbitrary ones."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        net.edge_norm.weight.copy_(1 + 0.5 * torch.randn(net.edge_norm.weight.shape, generator=g))
        net.edge_norm.bias.copy_(0.5 * torch.randn(net.edge_norm.bias.shape, generator=g))


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("preset", ["tiny", "small"])
def test_factorised_equals_materialised_in_float64(preset: str, seed: int) -> None:
    torch.manual_seed(seed)
    net = Crysformer(CrysformerConfig.preset(preset)).double().eval()
    randomise_norm(net, seed)
    x = random_crystals(seed, torch.float64)
    with torch.no_grad():
        out, ref = net(*x), materialised_forward(net, *x)
    for got, want in zip(out, ref, strict=True):
        assert relative_error(got, want) < 1e-12


@pytest.mark.parametrize("seed", [3, 4])
def test_bundled_model_float32_matches_within_round_off(seed: int) -> None:
    """The shipped DAO-G, float32 on padded random crystals: outputs agree to round-off."""
    net = load_model("dao-g-base", device="cpu").net
    x = random_crystals(seed, torch.float32, b=6, n=12)
    with torch.no_grad():
        out, ref = net(*x), materialised_forward(net, *x)
    for got, want in zip(out, ref, strict=True):
        assert relative_error(got, want) < 1e-4
    assert torch.all(out.coord[3, 2:] == 0)  # padded atoms stay silent


@pytest.mark.parametrize(
    ("preset", "n", "b", "mode"),
    [
        ("tiny", 9, 4, "eager"),
        ("small", 5, 13, "eager"),
        ("base", 20, 4, "eager"),
        ("tiny", 1, 5, "eager"),
        ("tiny", 5, 7, "compile"),
    ],
)
def test_fused_kernel_equals_factorised(preset: str, n: int, b: int, mode: str) -> None:
    """The one-kernel attention (dao_core.fused_attention), run by Triton's interpreter on the
    CPU, gives the PyTorch path's outputs in float32 on padded crystals: head dims that are
    not powers of two, crystals of up to 20 atoms, small cells stacked several to a tile
    (13 five-atom crystals: tiles of 6, 6 and 1), and inside a ``torch.compile`` graph (it is
    a registered operator). A fresh interpreter, because Triton reads TRITON_INTERPRET when
    triton.language is first imported."""
    pytest.importorskip("triton")
    env = {**os.environ, "TRITON_INTERPRET": "1", "DAO_FUSED_ATTENTION": "1"}
    script = Path(__file__).with_name("fused_check.py")
    args = [sys.executable, str(script), preset, str(n), str(b)] + (
        ["compile"] * (mode == "compile")
    )
    run = subprocess.run(args, env=env, capture_output=True, text=True)
    assert run.returncode == 0, run.stderr[-2000:]
    errors = json.loads(run.stdout.splitlines()[-1])
    assert errors["used_kernel"] and max(errors["relative"]) < 1e-5, errors
    assert errors["padding_silent"]


@pytest.mark.parametrize(("preset", "n"), [("base", 5), ("base", 20), ("paper", 20)])
def test_fused_kernel_compiles_for_hopper(preset: str, n: int) -> None:
    """The interpreter does not run Triton's compiler: compile the kernel for sm_90 in bf16 at
    the shipped presets' sizes, as a GPU would (Triton's bundled ptxas; no GPU needed)."""
    pytest.importorskip("triton")
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource, compile

    from dao_core.fused_attention import _attention_kernel, tile_sizes

    cfg = CrysformerConfig.preset(preset)
    sizes = tile_sizes(n, cfg.hidden // cfg.heads, 3 * cfg.fourier)
    names = _attention_kernel.arg_names
    types = dict.fromkeys(names, "i32")
    types.update(
        dict.fromkeys(["q_ptr", "k_ptr", "v_ptr", "w_ptr", "waves_ptr", "out_ptr"], "*bf16")
    )
    types.update(
        dict.fromkeys(["mean_ptr", "inv_std_ptr", "gram_ptr", "centre_ptr", "shift_ptr"], "*fp32")
    )
    types.update(mask_ptr="*i8", scale="fp32")
    constants = {**sizes, "PRECISION": "tf32"}
    types.update(dict.fromkeys(constants, "constexpr"))
    source = ASTSource(
        fn=_attention_kernel,
        signature=types,
        constexprs={(names.index(k),): v for k, v in constants.items()},
    )
    kernel = compile(source, target=GPUTarget("cuda", 90, 32))
    assert "mma" in kernel.asm["ptx"] and kernel.asm["cubin"]
