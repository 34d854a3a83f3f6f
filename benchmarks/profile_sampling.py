"""Where a DAO-G sampling step spends its GPU time: torch.profiler over a few predictor-corrector
steps of a random-weight model (speed does not depend on training), kernels by self CUDA time.

    python benchmarks/profile_sampling.py --preset base --atoms 5 --batch 4096 --steps 10 \
        [--compile]

Runs the default sampling path (fused attention where it applies) without the CUDA graph, so
each kernel is seen, then times the same steps with the graph for comparison. ``--compile``
profiles the network under ``torch.compile`` (what inductor leaves unfused); ``--trace``
writes a Chrome trace.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

from dao_core.dao import DAOModel
from dao_core.data import CrystalBatch
from dao_core.diffusion import SamplerSettings, sample
from dao_core.model import CrysformerConfig, CrysformerOutput


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="base")
    parser.add_argument("--atoms", type=int, default=5)
    parser.add_argument("--batch", type=int, default=4096)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--rows", type=int, default=30, help="kernels to list")
    parser.add_argument("--compile", action="store_true", help="torch.compile the network")
    parser.add_argument("--trace", type=Path)
    args = parser.parse_args()
    device = torch.device("cuda")
    torch.manual_seed(0)
    model = DAOModel("dao-g", CrysformerConfig.preset(args.preset)).to(device).eval()
    b, n = args.batch, args.atoms
    types = torch.randint(1, 90, (b, n), device=device)
    mask = torch.ones(b, n, dtype=torch.bool, device=device)

    network = torch.compile(model.net, dynamic=False, fullgraph=True) if args.compile else model.net

    def net(frac: torch.Tensor, lattice: torch.Tensor, t: torch.Tensor) -> CrysformerOutput:
        with torch.autocast("cuda", torch.bfloat16):
            out = network(CrystalBatch(types, frac, lattice, mask), t)
        return CrysformerOutput(*(x.float() for x in out))

    def run(graph: bool) -> float:
        torch.cuda.synchronize()
        started = time.perf_counter()
        sample(net, model.schedule, mask, args.steps, SamplerSettings(), graph=graph)
        torch.cuda.synchronize()
        return time.perf_counter() - started

    run(False)  # warm-up: kernels compiled, cuBLAS handles
    run(True)
    eager_s, graph_s = run(False), run(True)
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        run(False)
    print(prof.key_averages().table(sort_by="self_cuda_time_total", row_limit=args.rows))
    evals = 2 * args.steps
    print(
        f"{args.preset}{' compiled' if args.compile else ''}, {n} atoms, batch {b}, "
        f"{args.steps} steps ({evals} network evaluations): "
        f"eager {1e3 * eager_s / evals:.2f} ms/eval, CUDA graph {1e3 * graph_s / evals:.2f} "
        f"ms/eval -> {b / graph_s * args.steps / 1000:.1f} structures/s at 1000 steps "
        f"({torch.cuda.get_device_name()})"
    )
    if args.trace:
        prof.export_chrome_trace(str(args.trace))


if __name__ == "__main__":
    main()
