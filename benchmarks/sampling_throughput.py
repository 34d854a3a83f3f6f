"""Forward and sampling throughput of Crysformer presets, batch sizes swept.

    python benchmarks/sampling_throughput.py --device cuda --presets paper,base \
        --batch-sizes 64,256,1024,4096 --atoms 5 --steps 100

Prints a table: preset, atoms per crystal, batch size, forward structures/s, and
predictor-corrector sampling structures/s (``--steps`` steps, two network calls each; the
1000-step figure is the measured rate scaled by steps/1000). Random weights: speed does not
depend on training.
"""

from __future__ import annotations

import argparse
import time

import torch
from rich.console import Console
from rich.table import Table

from dao_core.dao import DAOModel
from dao_core.model import CrysformerConfig


def timed(fn, device: torch.device, repeat: int) -> float:  # type: ignore[no-untyped-def]
    fn()  # warm-up (allocator, kernels)
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(repeat):
        fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return (time.perf_counter() - start) / repeat


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--presets", default="paper,base")
    parser.add_argument("--batch-sizes", default="16,64,256")
    parser.add_argument("--atoms", type=int, default=5)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--guidance", action="store_true", help="add a DAO-P of the same preset")
    args = parser.parse_args()
    device = torch.device(args.device)
    table = Table(
        "preset", "params (M)", "atoms", "batch", "forward struct/s", "sampling struct/s",
        "1000-step struct/s", "guidance", "device",
    )  # fmt: skip
    amp = torch.autocast("cuda", torch.bfloat16, enabled=device.type == "cuda")
    for preset in args.presets.split(","):
        cfg = CrysformerConfig.preset(preset)
        model = DAOModel("dao-g", cfg).to(device).eval()
        guide = DAOModel("dao-p", cfg).to(device).eval() if args.guidance else None
        params = sum(p.numel() for p in model.net.parameters()) / 1e6
        for b in map(int, args.batch_sizes.split(",")):
            n = args.atoms
            types = torch.randint(1, 90, (b, n), device=device)
            mask = torch.ones(b, n, dtype=torch.bool, device=device)
            frac = torch.rand(b, n, 3, device=device)
            lattice = 5 * torch.eye(3, device=device).expand(b, 3, 3)
            t = torch.full((b,), 500, device=device)

            def forward() -> None:
                with torch.no_grad(), amp:
                    model.net(types, frac, lattice, mask, t)  # noqa: B023

            def sampling() -> None:
                model.sample(types, mask, args.steps, guide, 20.0 if guide else 0.0)  # noqa: B023

            fwd = timed(forward, device, 10)
            smp = timed(sampling, device, 1)
            table.add_row(
                preset, f"{params:.1f}", str(n), str(b), f"{b / fwd:,.0f}",
                f"{b / smp:,.0f}", f"{b / smp * args.steps / 1000:,.1f}",
                "yes" if guide else "no", str(device),
            )  # fmt: skip
    Console().print(table)


if __name__ == "__main__":
    main()
