"""DiffCSP-protocol metrics against hand-computed numbers."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import smact
from pymatgen.core import Composition, Element, Lattice, Structure
from smact.screening import pauling_test

from dao_core.metrics import (
    composition_validity,
    evaluate_csp,
    match,
    structure_validity,
)


def rocksalt(a: float = 5.64) -> Structure:
    """NaCl in its 2-atom fcc primitive cell (Fm-3m)."""
    fcc = 0.5 * a * np.array([[0, 1, 1], [1, 0, 1], [1, 1, 0]])
    return Structure(Lattice(fcc), ["Na", "Cl"], [[0, 0, 0], [0.5] * 3])


def cscl_type(a: float = 3.55) -> Structure:
    return Structure(Lattice.cubic(a), ["Na", "Cl"], [[0, 0, 0], [0.5] * 3])


def generic_p1() -> Structure:
    """No symmetry: its primitive cell is itself and only the identity maps it onto itself."""
    lattice = Lattice.from_parameters(4.1, 4.7, 5.3, 81.0, 97.0, 103.0)
    frac = [[0.02, 0.05, 0.11], [0.47, 0.18, 0.33], [0.21, 0.61, 0.58], [0.73, 0.42, 0.86]]
    return Structure(lattice, ["Mg", "O", "Mg", "O"], frac)


def rotation(seed: int = 0) -> np.ndarray:
    q, r = np.linalg.qr(np.random.default_rng(seed).normal(size=(3, 3)))
    return q * np.sign(np.diag(r))


def test_identical_and_symmetry_transformed_copies_match_with_zero_rms() -> None:
    s = generic_p1()
    assert match(s, s) == pytest.approx(0.0, abs=1e-6)
    # rotate the Cartesian frame, permute the sites and translate all atoms
    perm = [2, 0, 3, 1]
    moved = Structure(
        Lattice(s.lattice.matrix @ rotation().T),
        [s.species[i] for i in perm],
        (s.frac_coords[perm] + [0.31, -0.12, 0.77]) % 1.0,
    )
    rms = match(moved, s)
    assert rms is not None and rms < 1e-6
    assert match(rocksalt(), rocksalt()) == pytest.approx(0.0, abs=1e-6)


def test_perturbed_copy_has_the_normalised_rms_pymatgen_reports() -> None:
    s = generic_p1()
    delta = np.array([0.06, -0.05, 0.03])  # Å, Cartesian, on site 0 only
    cart = s.cart_coords.copy()
    cart[0] += delta
    pert = Structure(s.lattice, s.species, cart, coords_are_cartesian=True)
    n = len(s)
    # StructureMatcher removes the mean displacement (delta / n), then takes the RMS over sites
    # and divides by (V / N)^(1/3): |delta| * sqrt(n - 1) / n / (V / n)^(1/3).
    expected = np.linalg.norm(delta) * np.sqrt(n - 1) / n / (s.volume / n) ** (1 / 3)
    assert match(pert, s) == pytest.approx(expected, rel=1e-6)
    assert expected == pytest.approx(0.012478, abs=1e-6)  # V = 97.9 Å^3, |delta| = 0.0837 Å


def test_rocksalt_and_cscl_arrangements_do_not_match() -> None:
    assert match(cscl_type(), rocksalt()) is None
    assert match(None, rocksalt()) is None


def test_rmse_is_averaged_over_matched_crystals_only() -> None:
    s = generic_p1()
    pert = s.copy()
    pert.translate_sites([0], [0.05, 0.0, 0.0], frac_coords=False, to_unit_cell=True)
    r = match(pert, s)
    assert r is not None and r > 1e-3
    m = evaluate_csp([[s], [pert], [cscl_type()]], [s, s, rocksalt()], n_jobs=1)
    assert (m.n, m.n_matched, m.n_samples) == (3, 2, 1)
    assert m.match_rate == pytest.approx(2 / 3)
    assert m.rmse == pytest.approx(r / 2, rel=1e-9)
    assert m.valid_fraction == pytest.approx(1.0)
    failed = evaluate_csp([[None], [s]], [s, s], n_jobs=1)
    assert failed.match_rate == 0.5 and failed.valid_fraction == 0.5
    none = evaluate_csp([[cscl_type()]], [rocksalt()], n_jobs=1)
    assert none.match_rate == 0.0 and none.rmse is None


def _pair(d: float) -> Structure:
    """NaCl (valid composition) with the two atoms ``d`` Å apart in a 5 Å cubic box."""
    return Structure(Lattice.cubic(5.0), ["Na", "Cl"], [[0, 0, 0], [d / 5.0, 0, 0]])


def test_one_sample_rule_needs_valid_prediction_and_ground_truth() -> None:
    close, ok = _pair(0.3), _pair(0.6)
    assert not structure_validity(close) and structure_validity(ok)
    assert match(close, ok) is not None  # would match: 0.3 Å is small against (V/N)^(1/3)
    # invalid prediction, valid ground truth: not counted
    assert evaluate_csp([[close]], [ok], n_jobs=1).n_matched == 0
    # valid prediction, invalid ground truth: not counted with 1 sample ...
    assert evaluate_csp([[ok]], [close], n_jobs=1).n_matched == 0
    # ... but with k samples only the predictions' validity is checked
    k = evaluate_csp([[ok, None]], [close], n_jobs=1)
    assert (k.n_matched, k.n_samples) == (1, 2)
    assert k.valid_fraction == 0.5
    # k samples: an invalid sample is skipped even when it matches best; RMSE = min over valid
    gt, invalid, near, far = _pair(0.5), _pair(0.45), _pair(0.7), _pair(0.8)
    k2 = evaluate_csp([[far, invalid, near]], [gt], n_jobs=1)
    assert k2.n_matched == 1
    assert k2.rmse == pytest.approx(match(near, gt), rel=1e-9)
    assert match(invalid, gt) < k2.rmse < match(far, gt)


def test_parallel_evaluation_equals_serial() -> None:
    s = generic_p1()
    preds, gts = [], []
    for i in range(40):
        p = s.copy()
        p.translate_sites([i % 4], [0.01 * (i % 7), 0, 0], frac_coords=False)
        preds.append([p if i % 5 else cscl_type()])
        gts.append(s if i % 5 else rocksalt())
    serial = evaluate_csp(preds, gts, n_jobs=1)
    parallel = evaluate_csp(preds, gts, n_jobs=2)
    assert serial.to_dict() == parallel.to_dict()
    assert serial.n_matched == 32


def test_structure_validity_thresholds() -> None:
    assert structure_validity(_pair(0.5)) and not structure_validity(_pair(0.49))
    assert not structure_validity(Structure(Lattice.cubic(0.4), ["Fe"], [[0, 0, 0]]))  # V < 0.1
    one = Structure(Lattice.from_parameters(0.45, 3, 3, 90, 90, 90), ["Fe"], [[0, 0, 0]])
    assert one.volume > 0.1 and not structure_validity(one)  # self-image at 0.45 Å
    assert structure_validity(Structure(Lattice.cubic(2.87), ["Fe"], [[0, 0, 0]]))
    nan = Structure(Lattice(np.full((3, 3), np.nan)), ["Fe", "Fe"], [[0, 0, 0], [0.5] * 3])
    assert not structure_validity(nan)
    assert not structure_validity(None)


@pytest.mark.parametrize(
    ("formula", "valid"),
    [
        ("NaCl", True),
        ("NaCl2", False),
        ("Fe", True),
        ("Fe4", True),
        ("CuZn", True),
        ("CsF2", False),
        ("LiO2", False),
        ("LiFePO4", True),
        ("Na2Cl2", True),  # counts are gcd-reduced
    ],
)
def test_composition_validity(formula: str, valid: bool) -> None:
    comp = Composition(formula)
    assert composition_validity(comp) is valid
    numbers = [Element(el).Z for el, n in comp.items() for _ in range(int(n))]
    assert composition_validity(np.array(numbers[::-1])) is valid


def _diffcsp_reference(symbols: tuple[str, ...], counts: tuple[int, ...]) -> bool:
    """DiffCSP's smact_validity loop, written against smact's current neutral_ratios API."""
    if len(set(symbols)) == 1 or all(s in smact.metals for s in symbols):
        return True
    space = smact.element_dictionary(symbols)
    elems = [space[s] for s in symbols]
    for ox_states in itertools.product(*[e.oxidation_states for e in elems]):
        if smact.neutral_ratios(ox_states, stoichs=[(c,) for c in counts], threshold=max(counts)):
            if pauling_test(ox_states, [e.pauling_eneg for e in elems]):
                return True
    return False


def test_vectorised_smact_equals_reference_loop() -> None:
    formulas = [
        "NaCl", "NaCl2", "Fe2O3", "FeO", "Fe3O4", "TiO2", "SrTiO3", "LiFePO4", "CsV3Sb5", "MgB2",
        "Zr16Rh8O4", "HoWClO4", "TmMgHg2", "SiC", "CF4", "Ba2YCu3O7", "NaO3", "KMnO4", "CaF",
        "LaH10", "Nb3Sn", "Ca2N", "AlCl2", "PbI4", "SO4", "Cs2AgBiBr6", "Li7La3Zr2O12",
    ]  # fmt: skip
    for f in formulas:
        comp = Composition(f)
        symbols = tuple(el.symbol for el in sorted(comp, key=lambda e: e.Z))
        counts = np.array([int(comp[s]) for s in symbols])
        counts = tuple(int(c) for c in counts // np.gcd.reduce(counts))
        assert composition_validity(comp) == _diffcsp_reference(symbols, counts), f
