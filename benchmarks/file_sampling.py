"""Where the time of sampling a whole validation file goes: the same file sampled several times
in one process (`dao benchmark`'s path, `dao_core.csp.sample_batch`), so the first pass (kernel
compilation, CUDA-graph capture, cuBLAS set-up, `torch.compile` when asked) and the later ones
(the steady cost) are told apart, with the conversion to pymatgen structures timed on its own.

    python benchmarks/file_sampling.py --model dao-g-base --data perov5.npz --steps 1000 \
        --batch-size 4096 --passes 2 [--compile [--freeze] [--autotune]] [--json rows.json]

Prints one row per pass: seconds in all, of which sampling (synchronised) and converting to
pymatgen structures, and structures/s. ``--freeze`` lets inductor fold the weights into constants
(``torch._inductor.config.freezing``: weight-only products such as each layer's edge
projection are computed once at compile time instead of at every evaluation); ``--autotune``
lets it time its own Triton matrix-product templates against cuBLAS for each shape
(``max_autotune``: a longer first pass).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
import torch._inductor.config
from rich.console import Console
from rich.table import Table

from dao_core.checkpoint import load_model
from dao_core.csp import sample_batch
from dao_core.data import CrystalBatch
from dao_core.data.files import load_csv


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="dao-g-base")
    parser.add_argument("--data", required=True, help="a preprocessed .npz or CDVAE-layout CSV")
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--batch-size", type=int, default=4096)
    parser.add_argument("--passes", type=int, default=2)
    parser.add_argument("--compile", action="store_true")
    parser.add_argument("--freeze", action="store_true", help="inductor freezing (with --compile)")
    parser.add_argument(
        "--autotune", action="store_true", help="inductor max_autotune (with --compile)"
    )
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    torch._inductor.config.freezing = args.freeze
    torch._inductor.config.max_autotune = args.autotune
    model = load_model(args.model, device=args.device)
    compositions = [r.atomic_numbers for r in load_csv(args.data)]
    generator = torch.Generator(device=model.device)
    sync = torch.cuda.synchronize if model.device.type == "cuda" else lambda: None
    # Time the conversion to structures apart: wrap the method sample_batch calls per batch.
    converting = [0.0]
    to_structures = CrystalBatch.to_structures

    def timed_to_structures(batch: CrystalBatch) -> list:
        sync()  # the sampling before it counts as device time
        started = time.perf_counter()
        out = to_structures(batch)
        converting[0] += time.perf_counter() - started
        return out

    CrystalBatch.to_structures = timed_to_structures  # type: ignore[method-assign]
    rows = []
    for number in range(1, args.passes + 1):
        generator.manual_seed(0)
        sync()
        converting[0] = 0.0
        started = time.perf_counter()
        structures = sample_batch(
            model, compositions, args.steps, None, 0.0, args.batch_size, generator,
            compile=args.compile,
        )  # fmt: skip
        total = time.perf_counter() - started
        rows.append(
            dict(
                data=Path(args.data).name, model=args.model, n=len(structures), steps=args.steps,
                batch_size=args.batch_size, compile=args.compile, freeze=args.freeze,
                autotune=args.autotune,
                pass_=number, seconds=round(total, 3), sampling_s=round(total - converting[0], 3),
                converting_s=round(converting[0], 3),
                structures_per_s=round(len(structures) / total, 1),
                device=torch.cuda.get_device_name() if model.device.type == "cuda" else "cpu",
            )
        )  # fmt: skip
        print(json.dumps(rows[-1]), flush=True)
    table = Table(
        "file", "crystals", "steps", "compile", "pass", "seconds", "of which sampling",
        "converting", "structures/s",
    )  # fmt: skip
    for r in rows:
        table.add_row(
            r["data"], str(r["n"]), str(r["steps"]),
            "+".join(k for k in ("compile", "freeze", "autotune") if r[k]) or "no",
            str(r["pass_"]),
            f"{r['seconds']:.2f}", f"{r['sampling_s']:.2f}", f"{r['converting_s']:.2f}",
            f"{r['structures_per_s']:,.1f}",
        )  # fmt: skip
    Console(width=160).print(table)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
