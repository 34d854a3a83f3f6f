"""torch-sim batched relaxation vs atomate2's per-structure ASE route vs batched_fire (issue 13).

Relaxes the same N candidates (default: 20 pyxtal random CsV3Sb5 structures, fixed seed) three
ways with CHGNet, the same fmax and step cap, and prints wall time, converged count and the
per-structure |ΔE| (meV/atom) of the two batched routes against the per-structure one:

* ``ase``: what atomate2's ``ForceFieldRelaxMaker`` runs per structure, ASE ``FIRE`` on a
  ``FrechetCellFilter`` with ``CHGNetCalculator`` (``--route-a atomate2`` runs the real
  ``default_relax_maker()`` jobs through jobflow instead);
* ``batched_fire``: :func:`dao_flows.batched_fire.batched_fire_relax`;
* ``torchsim``: :func:`dao_flows.torchsim_relax.torchsim_relax` (torch-sim FIRE + Fréchet cell
  filter + InFlightAutoBatcher).

``--potential SevenNet`` runs the same comparison with SevenNet-l3i5 (atomate2's SevenNet
calculator per structure; ``BatchedSevenNetModel``, torch-sim's SevenNet with one neighbour
list and one graph per batch); batched_fire is CHGNet-only. ``--reference-n K`` times the
per-structure route on the first K candidates and scales it to N (it is sequential).

Issue bar: energies within 1 meV/atom of the atomate2 route.

    OMP_NUM_THREADS=1 python benchmarks/torchsim_vs_ase.py --n 20 --threads 1 --json out.json
    python benchmarks/torchsim_vs_ase.py --n 20 --source daog --route-a atomate2 \
        --potential SevenNet
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

SEVENNET = "7net-l3i5"
Route = dict[str, Any]  # {"wall_s", "results": [{"energy_per_atom", "converged", "steps"}]}


def make_candidates(formula: str, n: int, seed: int, source: str) -> list:
    """``n`` candidates of ``formula``: pyxtal random structures or DAO-G samples."""
    if source == "daog":
        from dao_core.csp import generate

        return [s for s in generate(formula, n, seed=seed).structures if s is not None][:n]
    from dao_core.data import parse_composition
    from dao_flows.generation import random_candidates

    z = parse_composition(formula)
    return [s for s, _ in random_candidates(z, n, seed) if s is not None]


def calculator(potential: str, device: str) -> Any:
    """atomate2's ASE calculator for ``potential`` (SevenNet: the re-ranking's 7net-l3i5)."""
    from atomate2.forcefields.utils import ase_calculator

    if potential == "SevenNet":
        return ase_calculator("SevenNet", model=SEVENNET, device=device)
    return ase_calculator("CHGNet", use_device=device)


def route_ase(structures: list, fmax: float, steps: int, device: str, potential: str) -> Route:
    """Per structure: ASE FIRE + FrechetCellFilter + the potential's calculator (atomate2's
    inner loop)."""
    from ase.filters import FrechetCellFilter
    from ase.optimize import FIRE
    from pymatgen.io.ase import AseAtomsAdaptor

    calc = calculator(potential, device)
    t0 = time.perf_counter()
    out = []
    for s in structures:
        atoms = AseAtomsAdaptor.get_atoms(s)
        atoms.calc = calc
        try:
            opt = FIRE(FrechetCellFilter(atoms), logfile=None)
            conv = bool(opt.run(fmax=fmax, steps=steps))
            e = float(atoms.get_potential_energy()) / len(atoms)
            out.append({"energy_per_atom": e, "converged": conv, "steps": opt.nsteps})
        except Exception as exc:  # noqa: BLE001 - report, keep going
            out.append({"energy_per_atom": None, "converged": False, "error": str(exc)})
    return {"wall_s": time.perf_counter() - t0, "results": out, "model_calls": None}


def route_atomate2(structures: list, fmax: float, steps: int, device: str, potential: str) -> Route:
    """Per structure: atomate2 ``default_relax_maker()`` jobs in one jobflow run_locally."""
    from jobflow import Flow, run_locally

    from dao_flows.relax import default_relax_maker

    maker = default_relax_maker(potential, fmax=fmax, steps=steps, device=device)
    if potential == "SevenNet":
        maker.calculator_kwargs["model"] = SEVENNET
    jobs = [maker.make(s) for s in structures]
    t0 = time.perf_counter()
    responses = run_locally(Flow(jobs), log=False, ensure_success=False)
    wall = time.perf_counter() - t0
    out = []
    for j, s in zip(jobs, structures, strict=True):
        try:
            doc = responses[j.uuid][1].output
            out.append(
                {
                    "energy_per_atom": float(doc.output.energy) / len(s),
                    "converged": str(doc.state) == "successful",
                    "steps": doc.output.n_steps,
                }
            )
        except (KeyError, AttributeError) as exc:
            out.append({"energy_per_atom": None, "converged": False, "error": repr(exc)})
    return {"wall_s": wall, "results": out, "model_calls": None}


def summary(result: Any) -> dict[str, Any]:
    """The fields compared between routes, from either route's per-structure result."""
    return {"energy_per_atom": result.energy_per_atom, "converged": result.converged,
            "steps": result.n_steps, "error": result.error}  # fmt: skip


def route_batched_fire(
    structures: list, fmax: float, steps: int, device: str, potential: str
) -> Route:
    from dao_flows.batched_fire import batched_fire_relax, load_chgnet

    model = load_chgnet(device)
    t0 = time.perf_counter()
    res, stats = batched_fire_relax(structures, model, fmax=fmax, steps=steps, device=device)
    return {
        "wall_s": time.perf_counter() - t0,
        "results": [summary(r) for r in res],
        "model_calls": stats["model_calls"],
    }


def route_torchsim(structures: list, fmax: float, steps: int, device: str, potential: str) -> Route:
    from dao_flows.torchsim_relax import torchsim_model, torchsim_relax

    model = torchsim_model(
        potential, device, **({"model": SEVENNET} if potential == "SevenNet" else {})
    )
    t0 = time.perf_counter()
    res, stats = torchsim_relax(structures, fmax=fmax, steps=steps, device=device, model=model)
    return {
        "wall_s": time.perf_counter() - t0,
        "results": [summary(r) for r in res],
        "model_calls": stats["model_calls"],
        "stats": stats,
    }


def compare(ref: Route, other: Route) -> dict[str, Any]:
    """|ΔE| (meV/atom) against ``ref`` over the structures both relaxed and converged."""
    diffs = [
        1000 * abs(float(b["energy_per_atom"]) - float(a["energy_per_atom"]))
        for a, b in zip(ref["results"], other["results"][: len(ref["results"])], strict=True)
        if a["converged"] and b["converged"]
    ]
    return {
        "n_both": len(diffs),
        "median_meV": float(np.median(diffs)) if diffs else None,
        "max_meV": float(max(diffs)) if diffs else None,
        "within_1meV": int(sum(d <= 1.0 for d in diffs)),
        "abs_diff_meV": diffs,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--formula", default="CsV3Sb5")
    ap.add_argument("--n", type=int, default=20)
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--source", choices=["pyxtal", "daog"], default="pyxtal")
    ap.add_argument("--fmax", type=float, default=0.05)
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--device", default=None)
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    ap.add_argument("--route-a", choices=["ase", "atomate2"], default="ase")
    ap.add_argument(
        "--potential", choices=["CHGNet", "SevenNet"], default="CHGNet",
        help=f"SevenNet: {SEVENNET}, batched through torch-sim (no batched_fire route)",
    )  # fmt: skip
    ap.add_argument(
        "--skip-reference",
        action="store_true",
        help="time only the batched routes (the per-structure route is linear in --n)",
    )
    ap.add_argument(
        "--reference-n",
        type=int,
        default=None,
        help="run the per-structure route on the first K candidates only and scale its time "
        "to --n (it relaxes one structure after another); energies compared on those K",
    )
    ap.add_argument("--per-structure", action="store_true", help="also print every structure")
    ap.add_argument("--json", type=Path, help="write the results here")
    args = ap.parse_args()
    warnings.filterwarnings("ignore")

    import torch
    from rich.console import Console
    from rich.table import Table

    from dao_core.data import right_handed_structure

    if args.threads:
        torch.set_num_threads(args.threads)
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    # atomate2's CandidateRelaxMaker re-expresses left-handed cells first; do so for all routes.
    structures = [
        right_handed_structure(s)
        for s in make_candidates(args.formula, args.n, args.seed, args.source)
    ]
    routes = {
        "ase" if args.route_a == "ase" else "atomate2": (
            route_ase if args.route_a == "ase" else route_atomate2
        ),
        "batched_fire": route_batched_fire,
        "torchsim": route_torchsim,
    }
    if args.potential != "CHGNet":
        del routes["batched_fire"]  # CHGNet only
    if args.skip_reference:
        del routes[next(iter(routes))]
    p = args.potential
    for fn in routes.values():  # warm-up: imports, model load, first-call overheads
        fn(structures[:1], args.fmax, 2, device, p)
    ref_name = next(iter(routes))
    n_ref = len(structures) if args.skip_reference else args.reference_n or len(structures)
    runs = {
        name: fn(structures[:n_ref] if name == ref_name else structures, args.fmax, args.steps,
                 device, p)
        for name, fn in routes.items()
    }  # fmt: skip
    ref = runs[ref_name]
    # The per-structure route's time for all n: measured, or scaled from its first n_ref.
    ref_wall_n = ref["wall_s"] * len(structures) / len(ref["results"])

    console = Console(width=150)
    meta = {
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "date": dt.datetime.now().astimezone().isoformat(timespec="seconds"),
        "host": platform.node(),
        "cpu": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "device": device,
        "gpu": torch.cuda.get_device_name() if device.startswith("cuda") else None,
        "n": len(structures),
        "formula": args.formula,
        "potential": args.potential,
        "source": args.source,
        "fmax": args.fmax,
        "steps": args.steps,
        "reference_n": len(ref["results"]),
        "reference_wall_s_for_n": ref_wall_n,
    }
    table = Table(
        title=f"{len(structures)} x {args.formula} ({args.source}), {args.potential}, "
        f"fmax {args.fmax} eV/Å, "
        f"<= {args.steps} steps, {device}, {meta['torch_threads']} torch thread(s)"
    )
    n = len(structures)
    cols = ("route", "wall s", f"wall s for {n}", "speed-up", "converged", "failed")
    for col in (*cols, "model calls", "steps (sum)"):
        table.add_column(col, justify="right")
    for col in (f"conv. both w/ {ref_name}", "median |ΔE| meV/at", "max |ΔE| meV/at", "≤1 meV"):
        table.add_column(col, justify="right")
    summary = {}
    for name, run in runs.items():
        res = run["results"]
        cmp = compare(ref, run) if name != ref_name else None
        summary[name] = cmp
        fmt = lambda v: "-" if v is None else f"{v:.3f}"  # noqa: E731
        table.add_row(
            name,
            f"{run['wall_s']:.1f}",
            f"{run['wall_s'] * len(structures) / len(res):.1f}",
            f"{ref_wall_n / run['wall_s'] * len(res) / len(structures):.1f}x",
            f"{sum(r['converged'] for r in res)}/{len(res)}",
            str(sum(r.get("energy_per_atom") is None for r in res)),
            "-" if run["model_calls"] is None else str(run["model_calls"]),
            str(sum(int(r.get("steps") or 0) for r in res)),
            "-" if cmp is None else str(cmp["n_both"]),
            "-" if cmp is None else fmt(cmp["median_meV"]),
            "-" if cmp is None else fmt(cmp["max_meV"]),
            "-" if cmp is None else f"{cmp['within_1meV']}/{cmp['n_both']}",
        )
    console.print(table)
    console.print(
        f"command: {meta['command']}\ndate: {meta['date']}  host: {meta['host']}  "
        f"cpu: {meta['cpu']} x{meta['cpu_count']}  gpu: {meta['gpu']}"
    )
    if args.per_structure:
        per = Table(title="per structure (E in eV/atom, steps, converged)")
        per.add_column("#", justify="right")
        for name in runs:
            per.add_column(name, justify="right")
        for i in range(len(structures)):
            cells = []
            for name in runs:
                r = runs[name]["results"][i]
                e = r.get("energy_per_atom")
                e_txt = "fail" if e is None else f"{e:.5f}"
                cells.append(f"{e_txt} {r.get('steps', 0)} {'y' if r['converged'] else 'n'}")
            per.add_row(str(i), *cells)
        console.print(per)
    if args.json:
        args.json.write_text(
            json.dumps({"meta": meta, "routes": runs, "vs_ref": summary}, indent=1, default=str)
        )


if __name__ == "__main__":
    main()
