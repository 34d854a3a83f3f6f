"""Energy-ranking plot of a CSP result (matplotlib, headless Agg backend)."""

from __future__ import annotations

from pathlib import Path

from dao_flows.schemas import CSPResultDoc

SOURCE_COLOURS = {"dao-g": "#1f77b4", "pyxtal": "#ff7f0e", "user": "#2ca02c"}


def plot_ranking(result: CSPResultDoc, path: str | Path, top: int | None = 30) -> Path:
    """Bar chart of E - E_min (meV/atom) per unique polymorph, coloured by source."""
    import matplotlib

    matplotlib.use("Agg")  # never needs a display
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    polys = result.polymorphs[:top] if top else result.polymorphs
    fig, ax = plt.subplots(figsize=(max(5.0, 0.45 * len(polys) + 2.0), 4.0))
    if polys:
        x = range(len(polys))
        heights = [p.e_above_min_meV for p in polys]
        colours = [SOURCE_COLOURS.get(p.source, "grey") for p in polys]
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
        sources = sorted({p.source for p in polys})
        handles = [Patch(color=SOURCE_COLOURS.get(s, "grey"), label=s) for s in sources]
        if any(h for h in hatches):
            handles.append(
                Patch(facecolor="white", edgecolor="black", hatch="//", label="not converged")
            )
        ax.legend(handles=handles, fontsize=8)
    else:
        ax.text(0.5, 0.5, "no relaxed candidates", ha="center", va="center", transform=ax.transAxes)
    ax.set_ylabel("E − E$_{min}$ (meV/atom)")
    ax.set_xlabel("rank: space group")
    ff = result.provenance.get("relaxation", {}).get("force_field_name", "CHGNet")
    ax.set_title(
        f"{result.formula}: {len(result.polymorphs)} unique of "
        f"{result.n_candidates} candidates ({ff})",
        fontsize=10,
    )
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
