"""One FIRE step on torch-sim's Fréchet cell filter: torch-sim 0.3's step (a Python loop over
systems, nine scalar ``expm_frechet`` calls each) against :mod:`dao_flows.frechet_fire` (one
batched matrix exponential), for growing batches of 9-atom cells on a cheap Lennard-Jones
model, so the table shows the optimiser's own cost per step (issue 13).

    python benchmarks/frechet_step.py --systems 20,200 --device cpu
"""

from __future__ import annotations

import argparse
import time

import torch
import torch_sim as ts
from ase.build import bulk
from rich.console import Console
from rich.table import Table
from torch_sim.models.lennard_jones import LennardJonesModel

from dao_flows.frechet_fire import frechet_cell_fire


def cells(n: int) -> list:
    out = []
    for i in range(n):  # 9-atom argon cells (fcc primitive cell x 3x3x1), strained, rattled
        a = bulk("Ar", "fcc", a=5.26).repeat((3, 3, 1))
        a.set_cell(a.cell[:] * (1 + 0.01 * (i % 5)), scale_atoms=True)
        a.rattle(0.05, seed=i)
        out.append(a)
    return out


def time_steps(step, init, state, repeats: int, device: torch.device) -> float:
    st = init(state.clone())
    st = step(st)  # warm-up
    if device.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(repeats):
        st = step(st)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return (time.perf_counter() - t0) / repeats


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--systems", default="20,200")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    device = torch.device(args.device)
    model = LennardJonesModel(sigma=3.405, epsilon=0.0104, cutoff=8.5, device=device,
                              compute_stress=True)  # fmt: skip
    table = Table(title=f"Fréchet FIRE step, 9-atom cells, Lennard-Jones, {device}")
    for col in ("systems", "model only ms", "torch-sim step ms", "batched step ms", "speed-up"):
        table.add_column(col, justify="right")
    for n in map(int, args.systems.split(",")):
        state = ts.io.atoms_to_state(cells(n), device, torch.float32)
        t_model = time_steps(lambda s: (model(s), s)[1], lambda s: s, state, args.repeats, device)
        old = ts.frechet_cell_fire(model=model, md_flavor="ase_fire")
        new = frechet_cell_fire(model)
        t_old = time_steps(old[1], old[0], state, args.repeats, device)
        t_new = time_steps(new[1], new[0], state, args.repeats, device)
        table.add_row(str(n), f"{1e3 * t_model:.1f}", f"{1e3 * t_old:.1f}", f"{1e3 * t_new:.1f}",
                      f"{t_old / t_new:.1f}x")  # fmt: skip
    Console().print(table)


if __name__ == "__main__":
    main()
