"""The polymorph report of a CSP run, built from its :class:`CSPResultDoc` alone.

Three views of one result: ranking tables that fit a 100-column terminal, simulated powder XRD
of the best polymorphs stacked in one figure (the quickest comparison with a measured
pattern), and a Markdown summary that indexes the output folder. ``dao csp`` only calls these.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from rich.table import Table

from dao_flows.plausibility import MAX_E_ABOVE_BEST, MAX_E_BELOW_CONVERGED
from dao_flows.plots import SOURCE_COLOURS, plot_ranking, pyplot, save_figure
from dao_flows.schemas import CSPResultDoc, RankedPolymorph

if TYPE_CHECKING:
    from pymatgen.analysis.diffraction.core import DiffractionPattern
    from pymatgen.core import Structure

XRD_TWO_THETA = (10.0, 80.0)  # degrees: the usual laboratory Cu Kα scan
XRD_FWHM = 0.15  # degrees 2θ: a laboratory diffractometer's peak width
XRD_TOP = 5  # polymorphs in the XRD figure unless asked otherwise (`dao csp --xrd-top`)
RANKING_PNG = "energy_ranking.png"
XRD_PNG = "xrd_top.png"
SUMMARY_MD = "summary.md"
LOG_FILE = "dao_csp.log"  # `dao csp` writes the libraries' warnings and logs here


# --------------------------------------------------------------------------- terminal tables


def status_word(p: RankedPolymorph) -> str:
    """One word for the terminal: ok, unconv. (relaxation hit its step limit), high E (a cell
    too far above the best to be a polymorph) or failed (far below every converged cell: the
    potential failed on it); the full reason is in summary.md."""
    if p.implausible is None:
        return "ok"
    words = {"unconverged": "unconv.", "high_energy": "high E", "potential_failed": "failed"}
    if p.flag is not None:
        return words[p.flag]
    # documents written before ``flag``: guessed from the (rounded) energy
    if p.e_above_min_meV > 1000 * MAX_E_ABOVE_BEST:
        return "high E"
    return "failed" if p.e_above_min_meV < -1000 * MAX_E_BELOW_CONVERGED else "unconv."


def result_table(result: CSPResultDoc, top: int | None = None) -> Table:
    """The ranked polymorphs for the terminal. The formula is in the title and the headers
    take two lines, so that a run's table is at most 100 columns wide and never cut."""
    table = Table(
        title=f"{result.formula}: {result.n_unique} unique / {result.n_candidates} "
        f"candidates ({result.relax_mode} relaxation)"
    )
    for col, kw in (
        ("#", {"justify": "right", "no_wrap": True}),
        ("space group", {"no_wrap": True}),
        ("E−Emin\nmeV/atom", {"justify": "right", "no_wrap": True}),
        (f"E {result.relaxed_by}\neV/atom", {"justify": "right", "no_wrap": True}),
        ("DAO-P", {"justify": "right", "no_wrap": True}),
        ("source", {"no_wrap": True}),
        ("candidate", {"overflow": "fold"}),  # narrower terminals: wrapped, never cut
        ("status", {"overflow": "fold"}),
    ):
        table.add_column(col, **kw)
    if result.reranked_by:
        table.caption = f"* re-ranked: {result.reranked_by} energy above its best of the re-ranked"
    for p in result.polymorphs[:top] if top else result.polymorphs:
        refined = p.refined_e_above_min_meV
        table.add_row(
            str(p.rank),
            f"{p.spacegroup_symbol} #{p.spacegroup_number}",
            f"{p.e_above_min_meV:.1f}" if refined is None else f"{refined:.1f}*",
            f"{p.energy_per_atom:.4f}",
            "—" if p.dao_p_score is None else f"{p.dao_p_score:.3f}",
            p.source,
            p.candidate_id + (f" (+{len(p.duplicates)})" if p.duplicates else ""),
            status_word(p),
        )
    return table


def dft_comparison(rows: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], float | None]:
    """``queries.dft_verifications`` rows with their DFT rank and DFT E - E_min (meV/atom)
    added, and Kendall's tau of the ML against the DFT order (None below two DFT energies)."""
    from scipy.stats import kendalltau

    done = sorted((r for r in rows if r["success"]), key=lambda r: r["dft_energy_per_atom"])
    dft_rank = {r["rank"]: i + 1 for i, r in enumerate(done)}
    best = done[0]["dft_energy_per_atom"] if done else None
    out = [
        {
            **r,
            "dft_rank": dft_rank.get(r["rank"]),
            "dft_e_above_min_meV": 1000 * (r["dft_energy_per_atom"] - best)
            if r["success"]
            else None,
        }
        for r in rows
    ]
    tau = None
    if len(done) > 1:
        ranks = sorted(dft_rank)
        tau = float(kendalltau(ranks, [dft_rank[r] for r in ranks])[0])
    return out, tau


def _fmt(value: float | int | None, spec: str = "") -> str:
    return "-" if value is None else format(value, spec)


def dft_table(rows: list[dict[str, Any]]) -> Table:
    """ML ranking next to the DFT (pw.x) energies of the verified top-k, and their agreement."""
    compared, tau = dft_comparison(rows)
    title = "DFT verification (Quantum ESPRESSO)"
    if tau is not None:
        title += f": Kendall tau of ML vs DFT order = {tau:.2f}"
    table = Table("ML #", "candidate", "ML E\neV/atom", "DFT #", "DFT E\neV/atom",
                  "DFT E−Emin\nmeV/atom", "status", title=title)  # fmt: skip
    for r in compared:
        table.add_row(
            str(r["rank"]), r["candidate_id"], f"{r['ml_energy_per_atom']:.4f}",
            _fmt(r["dft_rank"]), _fmt(r["dft_energy_per_atom"] if r["success"] else None, ".4f"),
            _fmt(r["dft_e_above_min_meV"], ".1f"),
            "ok" if r["success"] else f"failed: {r['failure_reason']}",
        )  # fmt: skip
    return table


# --------------------------------------------------------------------------- powder XRD


def xrd_pattern(structure: Structure) -> DiffractionPattern:
    """Cu Kα powder pattern over 2θ = 10–80°, intensities scaled to 100 (pymatgen)."""
    from pymatgen.analysis.diffraction.xrd import XRDCalculator

    return XRDCalculator(wavelength="CuKa").get_pattern(
        structure, scaled=True, two_theta_range=XRD_TWO_THETA
    )


def broadened(
    pattern: DiffractionPattern, two_theta: np.ndarray, fwhm: float = XRD_FWHM
) -> np.ndarray:
    """Gaussian peaks of width ``fwhm`` on the ``two_theta`` grid, maximum 1: close peaks
    merge as they do in a measured pattern, which sticks do not show."""
    sigma = fwhm / (2.0 * np.sqrt(2.0 * np.log(2.0)))
    delta = two_theta[:, None] - np.asarray(pattern.x)[None, :]
    y = np.exp(-0.5 * (delta / sigma) ** 2) @ np.asarray(pattern.y, dtype=float)
    peak = y.max(initial=0.0)
    return y / peak if peak > 0 else y


def xrd_label(p: RankedPolymorph) -> str:
    """Trace label: rank, space group, source and energy above the best polymorph."""
    return f"#{p.rank}  {p.spacegroup_symbol}  {p.source}  {p.e_above_min_meV:.1f} meV/atom"


def plot_xrd(result: CSPResultDoc, path: str | Path, top: int = XRD_TOP) -> Path:
    """Simulated XRD of the ``top`` best polymorphs stacked in one figure, best on top, each
    trace coloured by source and labelled with :func:`xrd_label`."""
    plt = pyplot()
    polys = result.polymorphs[:top]
    two_theta = np.linspace(*XRD_TWO_THETA, 3501)
    fig, ax = plt.subplots(figsize=(7.0, 1.0 + 1.1 * max(len(polys), 1)))
    for offset, p in enumerate(reversed(polys)):
        base = 1.3 * offset  # the label sits in the gap above its trace's highest peak
        y = broadened(xrd_pattern(p.structure), two_theta)
        ax.plot(two_theta, base + y, color=SOURCE_COLOURS[p.source], linewidth=0.9)
        ax.text(XRD_TWO_THETA[0] + 0.5, base + 1.02, xrd_label(p), fontsize=8, va="bottom")
    if not polys:
        ax.text(0.5, 0.5, "no relaxed candidates", ha="center", va="center", transform=ax.transAxes)
    ax.set_xlim(*XRD_TWO_THETA)
    ax.set_ylim(-0.05, 1.3 * max(len(polys), 1) + 0.05)
    ax.set_yticks([])
    ax.set_xlabel("2θ (°), Cu Kα")
    ax.set_ylabel("intensity (normalised, offset)")
    ax.set_title(f"{result.formula}: simulated powder XRD of the {len(polys)} best", fontsize=10)
    return save_figure(fig, path)


# --------------------------------------------------------------------------- Markdown summary


def pool_by_source(result: CSPResultDoc) -> dict[str, dict[str, int | None]]:
    """Per source: candidates, unique polymorphs, duplicates, failed and the best rank it
    reached. Candidate ids are ``<source>-<NNN>``, which attributes the duplicates."""
    counts: dict[str, Counter[str]] = defaultdict(Counter)
    best: dict[str, int] = {}
    for p in result.polymorphs:  # best first
        dups = [(d.rsplit("-", 1)[0], "duplicates") for d in p.duplicates]
        for source, kind in [(p.source, "unique"), *dups]:
            counts[source][kind] += 1
            best.setdefault(source, p.rank)
    for f in result.failed:
        counts[f.source]["failed"] += 1
    order = [*SOURCE_COLOURS, *sorted(set(counts) - set(SOURCE_COLOURS))]
    return {
        s: {
            "candidates": sum(counts[s].values()),
            "unique": counts[s]["unique"],
            "duplicates": counts[s]["duplicates"],
            "failed": counts[s]["failed"],
            "best_rank": best.get(s),
        }
        for s in order
        if s in counts
    }


def _row(cells: Sequence[object]) -> str:
    return "| " + " | ".join(str(c).replace("|", "\\|") for c in cells) + " |"


def _table(header: Sequence[str], rows: Sequence[Sequence[object]]) -> list[str]:
    return [_row(header), _row(["---"] * len(header)), *(_row(r) for r in rows), ""]


def _date(iso: str) -> str:
    try:
        return datetime.fromisoformat(iso).strftime("%Y-%m-%d %H:%M %Z").strip()
    except ValueError:
        return iso


def summary_markdown(
    result: CSPResultDoc,
    store: str,
    cifs: Sequence[str | Path] = (),
    *,
    figures: Sequence[str] = (RANKING_PNG, XRD_PNG),
    dft_rows: list[dict[str, Any]] | None = None,
    top: int | None = None,
    log_file: str | None = None,
) -> str:
    """The run as Markdown: what was run, the candidate pool by source, the ``top`` polymorphs
    (``cifs`` are their files, in rank order), the figures, the DFT check and the failures."""
    from pymatgen.core import Composition

    relax = result.provenance.get("relaxation", {})
    z = result.formula_units or round(
        result.n_atoms / Composition(result.reduced_formula).num_atoms
    )
    lines = [
        f"# Crystal-structure prediction: {result.formula}",
        "",
        f"- date: {_date(result.created_at)}",
        f"- run: `{result.run_uuid}`, stored in `{store}`",
        f"- cell: {result.n_atoms} atoms, {z} formula unit(s)",
        f"- relaxation: {result.relax_mode}, {result.relaxed_by}, "
        f"fmax {relax.get('fmax', '?')} eV/Å, at most {relax.get('steps', '?')} steps",
        f"- {result.n_candidates} candidates, {result.n_relaxed} relaxed, "
        f"{result.n_unique} unique, {len(result.failed)} failed",
    ]
    if result.reranked_by:
        n = sum(p.refined_e_above_min_meV is not None for p in result.polymorphs)
        lines.append(
            f"- re-ranking: the best {n} relaxed again with {result.reranked_by} "
            f"and ranked by its energy (ranks 1-{n})"
        )
    if log_file:
        lines.append(f"- library warnings and logs: [{log_file}]({log_file})")
    lines += ["", "## Candidate pool by source", ""]
    lines += _table(
        ["source", "candidates", "unique", "duplicates", "failed", "best rank"],
        [[s, *(_fmt(v) for v in row.values())] for s, row in pool_by_source(result).items()],
    )
    polys = result.polymorphs[:top] if top else result.polymorphs
    lines += ["## Ranked polymorphs", ""]
    names = [Path(c).name for c in cifs]
    energy_columns = [f"E − E_min, {result.relaxed_by} (meV/atom)"]
    if result.reranked_by:
        energy_columns.append(f"E − E_min, {result.reranked_by} (meV/atom)")
    lines += _table(
        [
            "rank",
            "space group",
            "source",
            *energy_columns,
            "V/atom (Å³)",
            "relaxation",
            "implausible",
            "CIF",
        ],
        [
            [
                p.rank,
                f"`{p.spacegroup_symbol}` (#{p.spacegroup_number})",
                p.source,
                f"{p.e_above_min_meV:.1f}",
                *([_fmt(p.refined_e_above_min_meV, ".1f")] if result.reranked_by else []),
                f"{p.structure.volume / len(p.structure):.2f}",
                p.relax_status,
                p.implausible or "no",
                f"[{names[i]}]({names[i]})" if i < len(names) else "-",
            ]
            for i, p in enumerate(polys)
        ],
    )
    if len(polys) < len(result.polymorphs):
        lines += [f"{len(result.polymorphs) - len(polys)} more in the store (`dao query`).", ""]
    lines += ["## Figures", ""]
    lines += [f"![{Path(f).stem}]({f})" for f in figures] + [""]
    if dft_rows:
        compared, tau = dft_comparison(dft_rows)
        tau_text = f"; Kendall tau of ML vs DFT order = {tau:.2f}" if tau is not None else ""
        lines += ["## DFT verification (Quantum ESPRESSO)" + tau_text, ""]
        lines += _table(
            [
                "ML rank",
                "candidate",
                "ML E (eV/atom)",
                "DFT rank",
                "DFT E (eV/atom)",
                "DFT E − E_min (meV/atom)",
                "status",
            ],
            [
                [
                    r["rank"],
                    r["candidate_id"],
                    f"{r['ml_energy_per_atom']:.4f}",
                    _fmt(r["dft_rank"]),
                    _fmt(r["dft_energy_per_atom"] if r["success"] else None, ".4f"),
                    _fmt(r["dft_e_above_min_meV"], ".1f"),
                    "ok" if r["success"] else f"failed: {r['failure_reason']}",
                ]
                for r in compared
            ],
        )
    if result.failed:
        lines += ["## Failed candidates", ""]
        lines += _table(
            ["candidate", "stage", "reason"],
            [[f.candidate_id, f.stage, f.reason] for f in result.failed],
        )
    return "\n".join(lines).rstrip() + "\n"


def write_report(
    result: CSPResultDoc,
    out_dir: str | Path,
    store: str,
    cifs: Sequence[str | Path] = (),
    *,
    dft_rows: list[dict[str, Any]] | None = None,
    top: int | None = None,
    xrd_top: int = XRD_TOP,
) -> dict[str, Path]:
    """Energy-ranking plot, stacked XRD of the ``xrd_top`` best and ``summary.md`` (linking
    the CIFs, figures and a ``dao_csp.log`` already there) in ``out_dir``; paths by name."""
    out = Path(out_dir)
    paths = {
        "ranking": plot_ranking(result, out / RANKING_PNG),
        "xrd": plot_xrd(result, out / XRD_PNG, top=xrd_top),
    }
    text = summary_markdown(
        result,
        store,
        cifs=cifs,
        figures=[paths["ranking"].name, paths["xrd"].name],
        dft_rows=dft_rows,
        top=top,
        log_file=LOG_FILE if (out / LOG_FILE).is_file() else None,
    )
    paths["summary"] = out / SUMMARY_MD
    paths["summary"].write_text(text, encoding="utf-8")
    return paths
