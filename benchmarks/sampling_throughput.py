"""DAO-G sampling throughput: the materialised attention with a Python step loop (before) against
the factorised attention with a CUDA-graph step loop, with and without ``torch.compile``, and
the fused Triton attention kernel (dao_core.fused_attention), presets and batch sizes swept.

    python benchmarks/sampling_throughput.py --device cuda --presets base,paper \
        --batch-sizes 256,1024,4096 --atoms 5,20 --steps 50
    python benchmarks/sampling_throughput.py --device cuda --only graph --steps 20
    python benchmarks/sampling_throughput.py --device cpu --presets base --batch-sizes 20 \
        --atoms 9 --steps 10 --threads 1

Prints one table: implementation, preset, atoms, batch, network evaluations per structure for a
1000-step run, 1000-step structures/s (measured over ``--steps`` strided steps, which cost the
same per step, and scaled), forward structures/s, peak GPU memory, and the agreement of the
implementations' outputs. Random weights: speed does not depend on training. ``--json`` also
writes the rows.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

import torch
from rich.console import Console
from rich.table import Table

from dao_core import fused_attention
from dao_core.dao import DAOModel
from dao_core.data import CrystalBatch
from dao_core.diffusion import SamplerSettings, sample
from dao_core.model import CrysformerConfig, CrysformerOutput

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from materialised import materialised_forward  # noqa: E402 (the test reference)

IMPLEMENTATIONS = {
    # name: (factorised attention, CUDA graph, torch.compile, fused Triton attention kernel:
    # None off, else its STACK_ROWS: 0 one crystal per program, 16 or 32 rows of small cells
    # stacked in one tile, 32 the default)
    "materialised + eager loop (before)": (False, False, False, None),
    "factorised + eager loop": (True, False, False, None),
    "factorised + CUDA graph": (True, True, False, None),
    "factorised + CUDA graph + compile": (True, True, True, None),
    "materialised + CUDA graph + compile": (False, True, True, None),
    "fused kernel, one crystal per program + CUDA graph": (True, True, False, 0),
    "fused kernel, 16-row tiles + CUDA graph": (True, True, False, 16),
    "fused kernel + CUDA graph": (True, True, False, 32),
    "fused kernel + CUDA graph + compile": (True, True, True, 32),
}


def selected(name: str, only: str) -> bool:
    """``--only`` holds comma-separated names: a full name selects that row alone, any other
    token every row whose name contains it."""
    tokens = [t.strip() for t in only.split(",") if t.strip()]
    return not tokens or any(t == name if t in IMPLEMENTATIONS else t in name for t in tokens)


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def timed(fn: Callable[[], object], device: torch.device, repeat: int) -> float:
    fn()  # warm-up: allocator, kernels, cuBLAS handles
    synchronize(device)
    start = time.perf_counter()
    for _ in range(repeat):
        fn()
    synchronize(device)
    return (time.perf_counter() - start) / repeat


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--presets", default="base,paper")
    parser.add_argument("--batch-sizes", default="256,1024")
    parser.add_argument("--atoms", default="5,20")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--threads", type=int, default=0, help="CPU threads (0: torch default)")
    parser.add_argument(
        "--only", default="", help="comma-separated implementation names or name fragments"
    )
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    device = torch.device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    amp = torch.autocast("cuda", torch.bfloat16, enabled=device.type == "cuda")
    rows = []
    for preset in args.presets.split(","):
        torch.manual_seed(0)
        model = DAOModel("dao-g", CrysformerConfig.preset(preset)).to(device).eval()
        params = sum(p.numel() for p in model.net.parameters()) / 1e6
        for n in map(int, args.atoms.split(",")):
            for b in map(int, args.batch_sizes.split(",")):
                types = torch.randint(1, 90, (b, n), device=device)
                mask = torch.ones(b, n, dtype=torch.bool, device=device)
                frac = torch.rand(b, n, 3, device=device)
                lattice = 5 * torch.eye(3, device=device) + torch.rand(b, 3, 3, device=device)
                t = torch.full((b,), 500, device=device)
                reference = None
                for name, (factorised, graph, compiled, fused) in IMPLEMENTATIONS.items():
                    if not selected(name, args.only) or (
                        (graph or fused) and device.type != "cuda"
                    ):
                        continue
                    try:  # one failing implementation must not lose the other rows
                        os.environ["DAO_FUSED_ATTENTION"] = "0" if fused is None else "1"
                        fused_attention.STACK_ROWS = fused or 0
                        forward = (
                            model.net if factorised else partial(materialised_forward, model.net)
                        )
                        if compiled:
                            forward = torch.compile(forward, dynamic=False, fullgraph=True)

                        def net(f, lat, tt, forward=forward):  # type: ignore[no-untyped-def]
                            with amp:
                                out = forward(CrystalBatch(types, f, lat, mask), tt)  # noqa: B023
                            return CrysformerOutput(*(x.float() for x in out))

                        compile_s = 0.0
                        if compiled:  # the first call compiles
                            started = time.perf_counter()
                            with torch.no_grad():
                                net(frac, lattice, t)
                            synchronize(device)
                            compile_s = time.perf_counter() - started

                        if device.type == "cuda":
                            torch.cuda.reset_peak_memory_stats()
                        with torch.no_grad():
                            forward_s = timed(lambda: net(frac, lattice, t), device, 5)  # noqa: B023
                            out = net(frac, lattice, t).coord
                            sample_s = timed(
                                lambda graph=graph: sample(
                                    net, model.schedule, mask, args.steps,  # noqa: B023
                                    SamplerSettings(), graph=graph,
                                ),
                                device, 1,
                            )  # fmt: skip
                        if reference is None:
                            reference = out
                        agreement = float((out - reference).norm() / reference.norm())
                        peak = (
                            torch.cuda.max_memory_allocated() / 2**30
                            if device.type == "cuda"
                            else 0
                        )
                        rows.append(
                            dict(
                                implementation=name, preset=preset, params_m=round(params, 1),
                                atoms=n, batch=b, evals_per_structure=2000,
                                structures_per_s_1000_steps=b / sample_s * args.steps / 1000,
                                forward_structures_per_s=b / forward_s, peak_gib=peak,
                                compile_s=round(compile_s, 1),
                                rel_diff_vs_first=agreement, device=torch.cuda.get_device_name()
                                if device.type == "cuda" else f"cpu x{torch.get_num_threads()}",
                            )
                        )  # fmt: skip
                        print(json.dumps(rows[-1]), flush=True)
                    except Exception as exc:  # noqa: BLE001
                        print(
                            f"{name}, {preset}, {n} atoms, batch {b}: failed: {exc!r}", flush=True
                        )
    table = Table(
        "implementation", "preset", "atoms", "batch", "evals/struct", "1000-step struct/s",
        "forward struct/s", "peak GiB", "compile s", "rel. diff", "device",
    )  # fmt: skip
    for r in rows:
        table.add_row(
            r["implementation"], r["preset"], str(r["atoms"]), str(r["batch"]),
            str(r["evals_per_structure"]), f"{r['structures_per_s_1000_steps']:,.1f}",
            f"{r['forward_structures_per_s']:,.0f}", f"{r['peak_gib']:.2f}",
            f"{r['compile_s']:.0f}", f"{r['rel_diff_vs_first']:.1e}", r["device"],
        )  # fmt: skip
    Console(width=200).print(table)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
