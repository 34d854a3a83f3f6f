"""Loss curves of training runs, restarts chained: the PNG of docs/training.md's training log.

    python scripts/plot_training.py --out docs/training-2026-12-02.png \
        --run "dao-g-base=g1.json,g2.json,g3.json" --run "descriptors=d1.json,d2.json"

Each ``--run`` is NAME=HISTORY[,HISTORY...]: the ``history.json`` files a run writes
(``dao_core.train``), in order; a later file continues the step count of the one before (a
weights-only warm restart), marked by a dotted line. Training loss is smoothed over 10 log
entries (500 steps); validation loss (fixed noise, ``dao_core.train.evaluate``) is drawn as
points.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402


def chained(paths: list[Path]) -> tuple[list, list, list[int]]:
    """(train (step, loss), val (step, loss), restart steps) with steps continued across files."""
    train, val, restarts, offset = [], [], [], 0
    for path in paths:
        history = json.loads(path.read_text())
        for entry in history:
            step = offset + entry["step"]
            if "total" in entry:
                train.append((step, entry["total"]))
            if "val_total" in entry:
                val.append((step, entry["val_total"]))
        offset += max(e["step"] for e in history)
        restarts.append(offset)
    return train, val, restarts[:-1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", action="append", required=True, help="NAME=H1.json[,H2.json]")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    fig, ax = plt.subplots(figsize=(7.5, 4.2))
    for i, spec in enumerate(args.run):
        name, files = spec.split("=", 1)
        train, val, restarts = chained([Path(f) for f in files.split(",")])
        color = f"C{i}"
        steps, losses = np.array(train).T
        smooth = np.convolve(losses, np.ones(10) / 10, mode="valid")
        ax.plot(steps[9:], smooth, color=color, lw=1.2, label=f"{name} (train)")
        if val:
            ax.plot(*np.array(val).T, "o", color=color, ms=4, label=f"{name} (validation)")
        for step in restarts:
            ax.axvline(step, color=color, ls=":", lw=0.8)
    ax.set_xlabel("optimiser step (batch: see each run's record)")
    ax.set_ylabel("diffusion loss (lattice + coordinates)")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out, dpi=130)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
