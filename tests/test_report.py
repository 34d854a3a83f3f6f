"""The polymorph report of a CSP run: simulated XRD, summary.md, the 100-column terminal table,
and a `dao csp` whose terminal shows no library warnings (they go to dao_csp.log).

The report tests use a hand-made CSPResultDoc of real pymatgen structures (rocksalt, CsCl and
zincblende NaCl); the CLI test runs the real flow with few candidates and relaxation steps.
"""

from __future__ import annotations

import gc
import logging
import sys
import warnings

import numpy as np
import pytest
from pymatgen.core import Lattice, Structure
from rich.console import Console
from typer.testing import CliRunner

from dao_flows.logs import library_output_to
from dao_flows.queries import write_structures
from dao_flows.report import (
    broadened,
    dft_table,
    pool_by_source,
    result_table,
    summary_markdown,
    write_report,
    xrd_pattern,
)
from dao_flows.schemas import CSPResultDoc, FailedCandidate, RankedPolymorph


def rocksalt(a: float = 5.64) -> Structure:
    return Structure.from_spacegroup(
        "Fm-3m", Lattice.cubic(a), ["Na", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]]
    )


def polymorph(rank: int, structure: Structure, sg: tuple[str, int], **kw) -> RankedPolymorph:
    fields = dict(
        candidate_id=f"pyxtal-{rank:03d}",
        source="pyxtal",
        energy_per_atom=-3.70 + 0.05 * (rank - 1),
        e_above_min_meV=50.0 * (rank - 1),
        relax_status="converged",
    )
    fields.update(kw)
    return RankedPolymorph(
        rank=rank,
        structure=structure,
        formula=structure.composition.formula,
        spacegroup_symbol=sg[0],
        spacegroup_number=sg[1],
        **fields,
    )


@pytest.fixture
def result() -> CSPResultDoc:
    cscl = Structure(Lattice.cubic(3.4), ["Na", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]])
    zincblende = Structure.from_spacegroup(
        "F-43m", Lattice.cubic(6.2), ["Na", "Cl"], [[0, 0, 0], [0.25, 0.25, 0.25]]
    )
    polys = [
        polymorph(1, rocksalt(), ("Fm-3m", 225), candidate_id="template-000", source="template",
                  duplicates=["pyxtal-004", "template-001"]),
        polymorph(2, cscl, ("Pm-3m", 221), dao_p_score=-0.2),
        polymorph(3, zincblende, ("F-43m", 216), candidate_id="dao-g-000", source="dao-g",
                  relax_status="not converged", implausible="relaxation did not converge"),
    ]  # fmt: skip
    failed = [
        FailedCandidate(
            candidate_id="dao-g-001", source="dao-g", stage="generation", reason="collapsed cell"
        )
    ]
    return CSPResultDoc(
        run_uuid="run-1", formula="NaCl", reduced_formula="NaCl", n_atoms=8,
        relax_mode="batched", polymorphs=polys, failed=failed, n_candidates=6, n_relaxed=5,
        n_unique=3, provenance={"relaxation": {"force_field_name": "CHGNet", "fmax": 0.1}},
    )  # fmt: skip


# --------------------------------------------------------------------------- XRD


def test_rocksalt_xrd_strongest_peak_is_200():
    """a = 5.64 Å: d(200) = 2.82 Å, Cu Kα (1.5418 Å) puts it at 2θ = 31.7°, the strongest."""
    pattern = xrd_pattern(rocksalt(5.64))
    strongest = int(np.argmax(pattern.y))
    assert pattern.x[strongest] == pytest.approx(31.70, abs=0.05)
    assert {tuple(sorted(map(abs, h["hkl"]))) for h in pattern.hkls[strongest]} == {(0, 0, 2)}
    assert min(pattern.x) >= 10 and max(pattern.x) <= 80
    grid = np.linspace(10, 80, 3501)
    profile = broadened(pattern, grid)
    assert profile.max() == pytest.approx(1.0)
    assert grid[np.argmax(profile)] == pytest.approx(31.70, abs=0.05)
    # (220) at 45.4° survives the broadening as its own peak.
    assert profile[np.abs(grid - pattern.x[np.argsort(pattern.y)[-2]]).argmin()] > 0.3


# --------------------------------------------------------------------------- summary.md


def test_report_writes_figures_and_summary(result, tmp_path):
    cifs = write_structures(result.polymorphs, tmp_path, "cif")
    dft = [
        {"rank": 1, "candidate_id": "template-000", "ml_energy_per_atom": -3.70,
         "success": True, "dft_energy_per_atom": -5.10, "failure_reason": None},
        {"rank": 2, "candidate_id": "pyxtal-002", "ml_energy_per_atom": -3.65,
         "success": True, "dft_energy_per_atom": -5.20, "failure_reason": None},
    ]  # fmt: skip
    (tmp_path / "dao_csp.log").write_text("library chatter\n")
    files = write_report(result, tmp_path, "memory://test", cifs, dft_rows=dft)
    assert {p.name for p in files.values()} == {"energy_ranking.png", "xrd_top.png", "summary.md"}
    assert files["xrd"].stat().st_size > 10_000 and files["ranking"].stat().st_size > 1000
    text = files["summary"].read_text()
    assert text.startswith("# Crystal-structure prediction: NaCl")
    assert "memory://test" in text and "run-1" in text and "[dao_csp.log](dao_csp.log)" in text
    assert "- cell: 8 atoms, 4 formula unit(s)" in text
    assert "![xrd_top](xrd_top.png)" in text and "![energy_ranking](energy_ranking.png)" in text
    rows = [line for line in text.splitlines() if line.startswith("| ") and "`" in line]
    assert len(rows) == 3
    for row, p, cif in zip(rows, result.polymorphs, cifs, strict=True):
        cells = [c.strip() for c in row.strip("|").split("|")]
        assert cells[:4] == [
            str(p.rank), f"`{p.spacegroup_symbol}` (#{p.spacegroup_number})", p.source,
            f"{p.e_above_min_meV:.1f}",
        ]  # fmt: skip
        assert float(cells[4]) == pytest.approx(p.structure.volume / len(p.structure), abs=0.01)
        assert cells[5:7] == [p.relax_status, p.implausible or "no"]
        assert cif.name in cells[7] and cif.is_file()
    assert "| template | 2 | 1 | 1 | 0 | 1 |" in text  # pool by source
    assert "| dao-g | 2 | 1 | 0 | 1 | 3 |" in text
    assert "Kendall tau of ML vs DFT order = -1.00" in text  # DFT reverses the order
    assert "| 1 | template-000 | -3.7000 | 2 | -5.1000 | 100.0 | ok |" in text
    assert "| dao-g-001 | generation | collapsed cell |" in text


def test_summary_top_and_pool(result):
    assert list(pool_by_source(result)) == ["dao-g", "pyxtal", "template"]  # present only
    assert pool_by_source(result)["pyxtal"] == {
        "candidates": 2, "unique": 1, "duplicates": 1, "failed": 0, "best_rank": 1,
    }  # fmt: skip
    text = summary_markdown(result, "store", top=1)
    assert "| 1 | `Fm-3m` (#225) |" in text and "`Pm-3m`" not in text
    assert "2 more in the store" in text and "DFT verification" not in text


def test_a_reranked_run_shows_both_potentials(result, tmp_path):
    """Re-ranked by SevenNet, the top is ordered by its energy: summary.md gives both
    potentials' E - E_min (so a non-monotonic CHGNet column is explained), the terminal marks
    the re-ranked rows and the ranking plot still draws."""
    reranked = result.model_copy(deep=True)
    reranked.provenance["refined_by"] = {"force_field_name": "SevenNet", "model": "7net-l3i5"}
    for p, refined in zip(reranked.polymorphs, (0.0, 12.5), strict=False):
        p.refined_e_above_min_meV, p.refined_energy_per_atom = refined, -4.0 + refined / 1000
    assert result.reranked_by is None and reranked.reranked_by == "7net-l3i5"
    text = summary_markdown(reranked, "store")
    assert "- re-ranking: the best 2 relaxed again with 7net-l3i5" in text
    assert "E − E_min, CHGNet (meV/atom) | E − E_min, 7net-l3i5 (meV/atom) |" in text
    assert "| `Pm-3m` (#221) | pyxtal | 50.0 | 12.5 |" in text
    assert "| `F-43m` (#216) | dao-g | 100.0 | - |" in text
    terminal = _rendered(result_table(reranked))
    assert "12.5*" in terminal and "* re-ranked: 7net-l3i5" in terminal
    assert "re-ranked" not in _rendered(result_table(result))
    files = write_report(reranked, tmp_path, "store")
    assert files["ranking"].stat().st_size > 1000


# --------------------------------------------------------------------------- terminal


def _rendered(renderable) -> str:
    console = Console(width=100, record=True)
    console.print(renderable)
    return console.export_text()


def test_terminal_tables_fit_100_columns(result):
    """Long space-group symbols, many duplicates, 3-digit ranks: still whole at 100 columns."""
    worst = result.model_copy(deep=True)
    worst.formula = "Cs2V6Sb10"
    p = worst.polymorphs[0]
    p.rank, p.spacegroup_symbol, p.spacegroup_number = 100, "P2_12_12_1", 19
    p.energy_per_atom, p.e_above_min_meV, p.dao_p_score = -10.1234, 12345.6, -12.345
    p.candidate_id, p.duplicates = "template-012", [f"dao-g-{i:03d}" for i in range(12)]
    p.implausible = "12.3 eV/atom above the best (> 0.5)"
    text = _rendered(result_table(worst))
    lines = text.splitlines()
    assert max(len(line) for line in lines) <= 100 and "…" not in text
    row = next(line for line in lines if "P2_12_12_1" in line)
    for value in ("100", "P2_12_12_1 #19", "12345.6", "-10.1234", "-12.345", "template-012 (+12)",
                  "high E"):  # fmt: skip
        assert value in row
    assert "meV/atom" in text and "unconv." in text
    dft = [
        {"rank": 1, "candidate_id": "template-012", "ml_energy_per_atom": -10.1234,
         "success": False, "dft_energy_per_atom": None, "failure_reason": "SCF not converged"},
    ]  # fmt: skip
    text = _rendered(dft_table(dft))
    assert max(len(line) for line in text.splitlines()) <= 100 and "…" not in text


# --------------------------------------------------------------------------- log capture


def test_library_output_goes_to_the_log_and_state_is_restored(tmp_path, capsys):
    root = logging.getLogger()
    before = (warnings.showwarning, list(root.handlers), root.level, sys.stdout, sys.stderr)
    quiet = logging.getLogger("dao-test-own-handler")
    quiet.propagate, own = False, logging.StreamHandler(sys.stderr)
    quiet.addHandler(own)
    console = Console()  # DAO's own output: stays on the terminal
    target = tmp_path / "out" / "run.log"
    with library_output_to(target, console=console) as log, warnings.catch_warnings():
        console.print("dao progress")
        warnings.simplefilter("always")
        warnings.warn("noisy library", UserWarning, stacklevel=1)
        logging.getLogger("jobflow.core.job").info("Starting job - x")
        quiet.warning("from a logger that does not propagate")
        print("CHGNet banner")
    assert (warnings.showwarning, root.handlers, root.level, sys.stdout, sys.stderr) == (
        before[0], before[1], before[2], before[3], before[4],
    )  # fmt: skip
    assert quiet.handlers == [own]
    quiet.removeHandler(own)
    console.print("dao afterwards")  # follows sys.stdout again
    captured = capsys.readouterr()
    assert captured.out == "dao progress\ndao afterwards\n" and captured.err == ""
    text = log.read_text()
    assert "dao progress" not in text
    for expected in ("UserWarning: noisy library", "INFO jobflow.core.job: Starting job",
                     "does not propagate", "CHGNet banner"):  # fmt: skip
        assert expected in text


def test_cli_csp_writes_report_and_keeps_warnings_off_the_terminal(dao_env, tmp_path, monkeypatch):
    """Third-party warnings, logs and prints during `dao csp` end up in dao_csp.log."""
    from pymatgen.analysis.diffraction.xrd import XRDCalculator

    from dao_flows.cli import app

    get_pattern = XRDCalculator.get_pattern

    def noisy_get_pattern(self, *args, **kwargs):
        warnings.warn("pymatgen-style noise", UserWarning, stacklevel=1)
        logging.getLogger("pymatgen.test").warning("a library log record")
        print("a library print")
        return get_pattern(self, *args, **kwargs)

    def to_stderr(message, category, filename, lineno, file=None, line=None):
        # Python's own warning display (pytest records warnings instead of showing them).
        sys.stderr.write(warnings.formatwarning(message, category, filename, lineno, line))

    monkeypatch.setattr(XRDCalculator, "get_pattern", noisy_get_pattern)
    out = tmp_path / "csp_out"
    args = "csp NaCl --n 1 --n-random 2 --n-template 1 --steps 10 --formula-units 2 --seed 5 "
    args += "--relax-steps 20 --fmax 0.1 --device cpu --xrd-top 3"
    # Earlier tests' garbage (third-party objects whose ResourceWarnings Python's default
    # filters hide) is collected now, not during the run whose terminal is checked.
    gc.collect()
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        warnings.showwarning = to_stderr
        res = CliRunner().invoke(app, args.split() + ["--out", str(out)])
        assert warnings.showwarning is to_stderr  # restored after the run
    assert res.exit_code == 0, res.output
    assert "unique / 4 candidates" in res.output and "summary.md" in res.output
    assert not [line for line in res.output.splitlines() if "Warning" in line], res.output
    assert "a library" not in res.output
    assert (out / "xrd_top.png").stat().st_size > 10_000
    summary = (out / "summary.md").read_text()
    assert "# Crystal-structure prediction: NaCl" in summary and "rank01_NaCl" in summary
    log = (out / "dao_csp.log").read_text()
    assert "UserWarning: pymatgen-style noise" in log and "a library log record" in log
    assert "a library print" in log and "Starting job - dao generate" in log
