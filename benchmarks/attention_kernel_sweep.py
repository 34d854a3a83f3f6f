"""Launch options of the fused attention kernel (dao_core.fused_attention), timed alone.

For each preset and cell size, times one call of ``attention_messages`` on random inputs of a
sampling batch for Triton's warps per program and software-pipelining stages, then the tile
height (crystals stacked per program) at the best of those, and prints microseconds per call,
the speed-up over the shipped options and the largest deviation from the shipped options'
output (same arithmetic, so bf16 round-off at most).

    python benchmarks/attention_kernel_sweep.py --presets base,paper --atoms 5,20 --batch 4096
"""

from __future__ import annotations

import argparse
import itertools
import json
import math

import torch
from rich.console import Console
from rich.table import Table
from triton.testing import do_bench

from dao_core import fused_attention
from dao_core.model import PRESETS

WARPS = (2, 4, 8)
STAGES = (1, 2, 3)
ROWS = (0, 16, 32, 64)  # 0: one crystal per program


def random_inputs(preset: str, atoms: int, batch: int, device: str) -> tuple[torch.Tensor, ...]:
    """Inputs of ``attention_messages`` in the dtypes the layer passes under bf16 autocast."""
    cfg = PRESETS[preset]
    heads, dim, k3 = cfg["heads"], cfg["hidden"] // cfg["heads"], 3 * cfg["fourier"]
    gen = torch.Generator(device).manual_seed(0)

    def randn(*shape: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        return torch.randn(*shape, generator=gen, device=device).to(dtype)

    phase = 2 * math.pi * torch.rand(batch, atoms, k3, generator=gen, device=device)
    waves = torch.cat([phase.sin(), phase.cos()], -1).to(torch.bfloat16)
    mask = torch.ones(batch, atoms, dtype=torch.int8, device=device)
    mask[::3, -1] = 0  # some padded sites
    return (
        randn(batch, atoms, 3, heads, dim, dtype=torch.bfloat16),
        randn(heads, dim, 2 * k3, dtype=torch.bfloat16) / math.sqrt(2 * k3),
        randn(batch, heads, dim), randn(heads, dim) * 0.1, randn(heads, dim) * 0.1,
        waves, randn(batch, atoms, atoms) * 0.05, 1 + 0.1 * randn(batch, atoms, atoms).abs(),
        mask,
    )  # fmt: skip


def timed(inputs: tuple[torch.Tensor, ...], rows: int, warps: int, stages: int) -> tuple:
    """(microseconds per call, output) at these launch options."""
    fused_attention.STACK_ROWS, fused_attention.NUM_WARPS = rows, warps
    fused_attention.NUM_STAGES = stages
    out = fused_attention.attention_messages(*inputs)
    return 1e3 * do_bench(lambda: fused_attention.attention_messages(*inputs)), out


def sweep(preset: str, atoms: int, batch: int, device: str, shipped: tuple) -> list[dict]:
    """Rows for one shape: warps x stages at the shipped tile height, then every tile height at
    the fastest of those."""
    inputs = random_inputs(preset, atoms, batch, device)
    base_us, reference = timed(inputs, *shipped)
    scale = reference.float().abs().max().item()
    rows = []

    def row(tile_rows: int, warps: int, stages: int) -> float:
        us, out = timed(inputs, tile_rows, warps, stages)
        dev = (out.float() - reference.float()).abs().max().item() / scale
        options = dict(tile_rows=tile_rows, warps=warps, stages=stages)
        rows.append(dict(preset=preset, atoms=atoms, batch=batch, **options, us=us,
                         speedup=base_us / us, max_dev=dev))  # fmt: skip
        return us

    times = {(w, s): row(shipped[0], w, s) for w, s in itertools.product(WARPS, STAGES)}
    warps, stages = min(times, key=times.get)
    for tile_rows in ROWS:
        if tile_rows != shipped[0]:
            row(tile_rows, warps, stages)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--presets", default="base,paper")
    ap.add_argument("--atoms", default="5,20")
    ap.add_argument("--batch", type=int, default=4096)
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--json", help="also write the rows here")
    args = ap.parse_args()
    shipped = (fused_attention.STACK_ROWS, fused_attention.NUM_WARPS, fused_attention.NUM_STAGES)
    table = Table(title=f"fused attention kernel, batch {args.batch}, one call")
    keys = ("preset", "atoms", "tile_rows", "warps", "stages", "us", "speedup", "max_dev")
    for key in keys:
        table.add_column(key.replace("_", " "), justify="right")
    rows = []
    shapes = itertools.product(args.presets.split(","), map(int, args.atoms.split(",")))
    try:
        for preset, atoms in shapes:
            new = sweep(preset, atoms, args.batch, args.device, shipped)
            for r in new:
                table.add_row(
                    *(f"{r[k]:.3g}" if isinstance(r[k], float) else str(r[k]) for k in keys)
                )
            rows += new
            table.add_section()
    finally:
        fused_attention.STACK_ROWS, fused_attention.NUM_WARPS, fused_attention.NUM_STAGES = shipped
        Console(width=110).print(table)
        if args.json:
            with open(args.json, "w") as f:
                json.dump(dict(device=torch.cuda.get_device_name(), rows=rows), f, indent=1)


if __name__ == "__main__":
    main()
