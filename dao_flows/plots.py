"""Energy-ranking plot of a CSP result, and the figure setup the report shares (matplotlib)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from dao_flows.plausibility import MAX_E_BELOW_CONVERGED
from dao_flows.schemas import CSPResultDoc, RankedPolymorph

# One colour per candidate source (schemas.Source), shared by every figure of a run.
SOURCE_COLOURS = {
    "dao-g": "#1f77b4",
    "pyxtal": "#ff7f0e",
    "template": "#9467bd",
    "user": "#2ca02c",
}


def save_figure(fig: Any, path: str | Path) -> Path:
    """Write ``fig`` (folders created) and free it: one place for every figure's file."""
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    pyplot().close(fig)
    return path


def pyplot() -> Any:
    """``matplotlib.pyplot`` on the Agg backend: figures are written on machines without a
    display (clusters, CI), and importing it lazily keeps ``dao --help`` fast."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def sources_present(polymorphs: list[RankedPolymorph]) -> list[str]:
    """The sources among ``polymorphs`` in SOURCE_COLOURS order: legends list only these."""
    present = {p.source for p in polymorphs}
    return [s for s in SOURCE_COLOURS if s in present]


def plot_ranking(result: CSPResultDoc, path: str | Path, top: int | None = 30) -> Path:
    """Bar chart of E - E_min (meV/atom) per unique polymorph, coloured by source, with the
    re-ranking potential's E - E_min as diamonds on the polymorphs it ordered; the legend names
    only the sources among the plotted polymorphs."""
    from matplotlib.patches import Patch

    plt = pyplot()
    # Cells on which the potential failed sit eV/atom below the rest and would flatten it.
    floor = -1000.0 * MAX_E_BELOW_CONVERGED
    polys = [p for p in result.polymorphs if p.e_above_min_meV >= floor][:top]
    fig, ax = plt.subplots(figsize=(max(5.0, 0.45 * len(polys) + 2.0), 4.0))
    if polys:
        x = range(len(polys))
        heights = [p.e_above_min_meV for p in polys]
        colours = [SOURCE_COLOURS[p.source] for p in polys]
        hatches = ["" if p.relax_status == "converged" else "//" for p in polys]
        bars = ax.bar(x, heights, color=colours, edgecolor="black", linewidth=0.5)
        for bar, hatch in zip(bars, hatches, strict=True):
            bar.set_hatch(hatch)
        ax.set_xticks(list(x))
        ax.set_xticklabels(
            [f"{p.rank}: {p.spacegroup_symbol}" for p in polys],
            rotation=60,
            ha="right",
            fontsize=8,
        )
        handles: list[Any] = [
            Patch(color=SOURCE_COLOURS[s], label=s) for s in sources_present(polys)
        ]
        if any(h for h in hatches):
            handles.append(
                Patch(facecolor="white", edgecolor="black", hatch="//", label="not converged")
            )
        # The re-ranked top is ordered by the second potential: its own E - E_min beside the bar.
        reranked = [(i, p.refined_e_above_min_meV) for i, p in enumerate(polys)]
        reranked = [(i, e) for i, e in reranked if e is not None]
        if reranked and result.reranked_by:
            xs, es = zip(*reranked, strict=True)
            handles.append(
                ax.scatter(xs, es, marker="D", s=22, color="black", zorder=3,
                           label=f"{result.reranked_by} (re-ranked)")
            )  # fmt: skip
        ax.legend(handles=handles, fontsize=8)
    else:
        ax.text(0.5, 0.5, "no relaxed candidates", ha="center", va="center", transform=ax.transAxes)
    ax.set_ylabel("E − E$_{min}$ (meV/atom)")
    ax.set_xlabel("rank: space group")
    ax.set_title(
        f"{result.formula}: {len(result.polymorphs)} unique of "
        f"{result.n_candidates} candidates ({result.relaxed_by})",
        fontsize=10,
    )
    return save_figure(fig, path)
