"""Composition parsing, canonical cells, CSV loading + cache, padded batches, sharding, splits."""

from __future__ import annotations

import itertools
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from pymatgen.analysis.structure_matcher import StructureMatcher
from pymatgen.core import Lattice, Structure

from dao_core.data import (
    CrystalBatch,
    CrystalRecord,
    bucketed_batches,
    canonicalize,
    held_out_ids,
    load_csv,
    load_many,
    load_split,
    parse_composition,
    record_from_structure,
    records_label,
    right_handed_structure,
    save_records,
    save_split,
    size_buckets,
    split_records,
)
from dao_core.data.compositions import reduced_formula
from dao_core.errors import DAOInputError


def skewed() -> Structure:
    """A non-reduced cell (c' = c + 2a + b) of a 3-atom triclinic crystal."""
    base = Lattice.from_parameters(3.9, 4.4, 5.1, 84.0, 95.0, 101.0).matrix
    matrix = base.copy()
    matrix[2] = base[2] + 2 * base[0] + base[1]
    cart = np.array([[0.1, 0.2, 0.3], [0.6, 0.1, 0.4], [0.3, 0.7, 0.8]]) @ base
    return Structure(Lattice(matrix), ["Ti", "O", "O"], cart, coords_are_cartesian=True)


# --- compositions -------------------------------------------------------------------------------


def test_parse_composition_counts() -> None:
    atoms = parse_composition("CsV3Sb5")
    assert atoms.dtype == np.int64 and len(atoms) == 9
    assert sorted(atoms.tolist()) == sorted([55] + [23] * 3 + [51] * 5)
    assert len(parse_composition("CsV3Sb5", formula_units=2)) == 18
    assert len(parse_composition("Zr16Rh8O4")) == 28
    assert len(parse_composition("Fe", formula_units=100)) == 100


def test_reduced_formula_of_atomic_numbers() -> None:
    assert reduced_formula([11, 17, 17, 11]) == "NaCl"  # order and cell multiples do not matter
    assert reduced_formula(parse_composition("CsV3Sb5", formula_units=2)) == "CsV3Sb5"
    assert reduced_formula(np.array([8, 26, 8, 26, 8], dtype=np.int32)) == "Fe2O3"


@pytest.mark.parametrize(
    ("formula", "kwargs", "word"),
    [
        ("", {}, "empty"),
        ("   ", {}, "empty"),
        ("Xx2O", {}, "Xx"),
        ("H0.5", {}, "H"),
        ("H0.5", {}, "0.5"),
        ("NaCl)", {}, "NaCl)"),
        ("Md2O", {}, "Md"),
        ("H0O", {}, "H"),
        ("NaCl", {"formula_units": 0}, "formula_units"),
        ("Fe101", {}, "101"),
        ("CsV3Sb5", {"formula_units": 12}, "108"),
        ("Fe20", {"max_atoms": 10}, "at most 10"),
    ],
)
def test_parse_composition_rejects_bad_input(formula: str, kwargs: dict, word: str) -> None:
    with pytest.raises(DAOInputError, match=None) as err:
        parse_composition(formula, **kwargs)
    assert word in str(err.value)
    assert isinstance(err.value, ValueError)


# --- canonical cells and records ----------------------------------------------------------------


def test_canonicalize_is_idempotent_and_preserves_the_crystal() -> None:
    s = skewed()
    c1 = canonicalize(s)
    c2 = canonicalize(c1)
    assert c1.lattice.abc != pytest.approx(s.lattice.abc)  # it did reduce the cell
    np.testing.assert_allclose(c2.lattice.matrix, c1.lattice.matrix, atol=1e-8)
    np.testing.assert_allclose(c2.frac_coords, c1.frac_coords, atol=1e-8)
    assert c1.volume == pytest.approx(s.volume, rel=1e-9)
    assert c1.density == pytest.approx(s.density, rel=1e-9)
    assert ((c1.frac_coords >= 0) & (c1.frac_coords < 1)).all()
    # the lattice is rebuilt from its parameters (pymatgen's convention: c along z)
    np.testing.assert_allclose(c1.lattice.matrix[2, :2], 0.0, atol=1e-9)
    rebuilt = Lattice.from_parameters(*s.get_reduced_structure().lattice.parameters)
    np.testing.assert_allclose(c1.lattice.matrix, rebuilt.matrix, atol=1e-9)
    rms = StructureMatcher(stol=0.5, angle_tol=10, ltol=0.3).get_rms_dist(c1, s)
    assert rms is not None and rms[0] < 1e-6


def test_record_round_trip() -> None:
    s = skewed()
    rec = record_from_structure(s, energy=-1.5, material_id="x-1")
    assert rec.atomic_numbers.dtype == np.int64 and rec.frac.dtype == np.float32
    assert rec.lattice.shape == (3, 3) and rec.lattice.dtype == np.float32
    assert (rec.energy, rec.material_id) == (-1.5, "x-1")
    back = rec.to_structure()
    assert back.volume == pytest.approx(s.volume, rel=1e-5)
    raw = record_from_structure(s, canonical=False)
    np.testing.assert_allclose(raw.lattice, s.lattice.matrix, rtol=1e-6)
    disordered = Structure(Lattice.cubic(3), [{"Fe": 0.5, "Ni": 0.5}], [[0, 0, 0]])
    with pytest.raises(DAOInputError, match="disordered"):
        record_from_structure(disordered)


# --- batches ------------------------------------------------------------------------------------


def test_batch_padding_mask_and_round_trip() -> None:
    structures = [
        skewed(),
        Structure(Lattice.cubic(2.87), ["Fe"], [[0, 0, 0]]),
        Structure(Lattice.cubic(5.64), ["Na", "Cl"] * 2, np.random.default_rng(0).random((4, 3))),
    ]
    batch = CrystalBatch.from_structures(structures)
    assert batch.batch_size == 3 and batch.atom_types.shape == (3, 4)
    assert batch.num_atoms.tolist() == [3, 1, 4]
    assert batch.mask.tolist()[1] == [True, False, False, False]
    assert (batch.atom_types[~batch.mask] == 0).all() and (batch.frac[~batch.mask] == 0).all()
    assert batch.energy is None
    assert batch.atom_types.dtype == torch.long and batch.mask.dtype == torch.bool
    for got, want in zip(batch.to("cpu").to_structures(), structures, strict=True):
        assert [sp.Z for sp in got.species] == [sp.Z for sp in want.species]
        np.testing.assert_allclose(got.lattice.matrix, want.lattice.matrix, atol=1e-5)
        np.testing.assert_allclose(got.frac_coords, want.frac_coords % 1.0, atol=1e-6)


def test_left_handed_cells_are_re_expressed_right_handed() -> None:
    """Same Cartesian sites, positive determinant: via the helper and out of every batch."""
    right = Structure(
        Lattice([[4.0, 0.2, 0.1], [0.3, 5.0, 0.0], [0.1, 0.4, 6.0]]),
        ["Sr", "Ti", "O"],
        [[0.1, 0.2, 0.3], [0.6, 0.55, 0.5], [0.9, 0.05, 0.45]],
    )
    left = Structure(
        -right.lattice.matrix, right.species, right.cart_coords, coords_are_cartesian=True
    )
    assert np.linalg.det(left.lattice.matrix) < 0
    assert right_handed_structure(right) is right
    for fixed in (
        right_handed_structure(left),
        CrystalBatch.from_structures([left]).to_structures()[0],
    ):
        assert np.linalg.det(fixed.lattice.matrix) > 0
        frac_of_original = fixed.lattice.get_fractional_coords(left.cart_coords)
        for a, b in zip(fixed.frac_coords, frac_of_original, strict=True):
            assert fixed.lattice.get_distance_and_image(a, b)[0] < 1e-4  # the same site


def test_batch_energies_and_compositions() -> None:
    recs = [
        record_from_structure(skewed(), energy=e, material_id=str(i))
        for i, e in enumerate([-1.0, None])
    ]
    batch = CrystalBatch.from_records(recs)
    assert batch.energy is not None
    assert batch.energy[0] == -1.0 and torch.isnan(batch.energy[1])
    with pytest.raises(DAOInputError, match="energy"):
        CrystalBatch.from_records(recs, energies_required=True)
    comp = CrystalBatch.from_compositions([parse_composition("NaCl"), parse_composition("Fe3")])
    assert comp.atom_types.tolist() == [[11, 17, 0], [26, 26, 26]]
    assert torch.equal(comp.lattice[1], torch.eye(3)) and (comp.frac == 0).all()


def _sized_records(sizes: Sequence[int]) -> list[CrystalRecord]:
    """Fe_n records of the given atom counts (geometry is irrelevant to batching)."""
    out = []
    for i, n in enumerate(sizes):
        frac = np.random.default_rng(i).random((n, 3))
        out.append(CrystalRecord(np.full(n, 26), frac, 3.0 * np.eye(3) * n, float(i), str(i)))
    return out


@pytest.mark.parametrize("n", [23, 40, 301])
def test_bucketed_batches_shard_disjointly_and_pad_little(n: int) -> None:
    sizes = np.random.default_rng(0).integers(1, 25, size=n)
    records = _sized_records(sizes)
    shards = [list(bucketed_batches(records, 4, seed=7, rank=r, world_size=2)) for r in range(2)]
    assert len(shards[0]) == len(shards[1])  # DDP: the same number of steps on every rank
    seen = [{i for b in shard for i in b} for shard in shards]
    assert not seen[0] & seen[1]
    assert len(seen[0] | seen[1]) >= n - 4  # at most one batch left out per epoch
    everything = list(bucketed_batches(records, 4, seed=7))
    assert sorted(i for b in everything for i in b) == list(range(n))
    assert everything == list(bucketed_batches(records, 4, seed=7))  # deterministic per seed
    assert everything != list(bucketed_batches(records, 4, seed=8))
    if n > 200:  # size bucketing: far less padding than random batches of the same size
        padding = sum(len(b) * sizes[b].max() - sizes[b].sum() for b in everything)
        order = np.random.default_rng(1).permutation(n)
        random = [order[i : i + 4] for i in range(0, n, 4)]
        assert padding < 0.25 * sum(len(b) * sizes[b].max() - sizes[b].sum() for b in random)


def test_bucketed_batches_cap_large_crystals() -> None:
    records = _sized_records([20] * 8 + [2] * 8)
    for batch in bucketed_batches(records, 8, seed=0, max_pairs_per_batch=800):
        n_max = max(len(records[i].atomic_numbers) for i in batch)
        assert len(batch) * n_max**2 <= 800 or len(batch) == 1
    with pytest.raises(DAOInputError, match="rank 2"):
        list(bucketed_batches(records, 8, seed=0, rank=2, world_size=2))


# --- splits -------------------------------------------------------------------------------------


def test_split_is_deterministic_and_recorded(tmp_path: Path) -> None:
    train, val = split_records(100, 0.1, seed=3)
    train2, val2 = split_records(100, 0.1, seed=3)
    assert np.array_equal(train, train2) and np.array_equal(val, val2)
    assert len(val) == 10 and len(train) == 90
    assert sorted(np.concatenate([train, val]).tolist()) == list(range(100))
    assert not np.array_equal(val, split_records(100, 0.1, seed=4)[1])
    path = save_split(tmp_path / "split.json", [f"mp-{i}" for i in train], val, 3, "x.csv")
    doc = load_split(path)
    assert doc["seed"] == 3 and doc["source"] == "x.csv"
    assert doc["val"] == val.tolist() and doc["train"][0] == f"mp-{train[0]}"
    with pytest.raises(DAOInputError, match="val_fraction"):
        split_records(10, 1.0, 0)
    (tmp_path / "bad.json").write_text("{")
    with pytest.raises(DAOInputError, match="bad.json"):
        load_split(tmp_path / "bad.json")


def test_split_of_held_out_ids_with_named_subsets(tmp_path: Path) -> None:
    path = save_split(tmp_path / "s.json", None, ["a", "b", "c"], 0, ["x.csv"],
                      val_sets={"stable": ["a"], "rest": ["b", "c"]})  # fmt: skip
    doc = load_split(path)
    assert "train" not in doc and doc["n_val"] == 3
    assert held_out_ids(path) == {"a", "b", "c"}
    assert held_out_ids(f"{path}:rest") == {"b", "c"}
    with pytest.raises(DAOInputError, match="no validation set 'other'.*rest, stable"):
        held_out_ids(f"{path}:other")


# --- CSV loading --------------------------------------------------------------------------------


def _write_csv(path: Path, cifs: list[str], energies: list[float]) -> None:
    frame = pd.DataFrame(
        {"material_id": [f"t-{i}" for i in range(len(cifs))], "cif": cifs, "e": energies}
    )
    frame.to_csv(path)


def test_load_csv_errors_name_file_and_row(tmp_path: Path) -> None:
    good = skewed().to(fmt="cif")
    path = tmp_path / "bad.csv"
    _write_csv(path, [good, good, "data_broken\n_cell_length_a 3\n"], [0.0, 1.0, 2.0])
    with pytest.raises(DAOInputError) as err:
        load_csv(path, cache_dir=tmp_path / "cache")
    assert "bad.csv" in str(err.value) and "row 2" in str(err.value) and "t-2" in str(err.value)
    with pytest.raises(DAOInputError, match="no label column 'missing'"):
        load_csv(path, label="missing", cache_dir="")
    with pytest.raises(DAOInputError, match="does not exist"):
        load_csv(tmp_path / "nope.csv")
    (tmp_path / "nocif.csv").write_text("a,b\n1,2\n")
    with pytest.raises(DAOInputError, match="'cif'"):
        load_csv(tmp_path / "nocif.csv", cache_dir="")
    (tmp_path / "binary.csv").write_bytes(b"\xff\xfe\x00\x81\x00")
    with pytest.raises(DAOInputError, match="binary.csv"):
        load_csv(tmp_path / "binary.csv", cache_dir="")


def test_load_csv_labels_dropping_and_limits(tmp_path: Path) -> None:
    small, big = skewed().to(fmt="cif"), (skewed() * (3, 3, 4)).to(fmt="cif")  # 108 atoms
    path = tmp_path / "mixed.csv"
    _write_csv(path, [small, small, big], [0.5, float("nan"), 1.0])
    labelled = load_csv(path, "e", cache_dir="")
    assert [r.material_id for r in labelled] == ["t-0"] and labelled[0].energy == 0.5
    unlabelled = load_csv(path, cache_dir="")
    assert [r.material_id for r in unlabelled] == ["t-0", "t-1"]
    assert all(r.energy is None for r in unlabelled)
    assert len(load_csv(path, cache_dir="", max_atoms=200)) == 3
    both = load_many([path, path], label_map={"mixed.csv": "e"}, cache_dir="")
    assert list(both) == [str(path)] and len(both[str(path)]) == 1


def test_preprocessed_file_round_trip_and_label(tmp_path: Path) -> None:
    small, big = skewed().to(fmt="cif"), (skewed() * (3, 3, 4)).to(fmt="cif")  # 108 atoms
    path = tmp_path / "mixed.csv"
    _write_csv(path, [small, big, small], [0.5, 1.0, float("nan")])
    records = load_csv(path, "e", cache_dir="", max_atoms=200)
    packed = save_records(tmp_path / "mixed.npz", records, "e")
    assert records_label(packed) == "e"
    again = load_csv(packed, max_atoms=200)
    assert [r.material_id for r in again] == ["t-0", "t-1"]
    for a, b in zip(records, again, strict=True):
        assert a.energy == b.energy and np.array_equal(a.frac, b.frac)
        assert np.array_equal(a.atomic_numbers, b.atomic_numbers)
    assert [r.material_id for r in load_csv(packed, "e")] == ["t-0"]  # max_atoms applies
    with pytest.raises(DAOInputError, match="holds the label 'e', not 'other'"):
        load_csv(packed, "other")
    (tmp_path / "junk.npz").write_bytes(b"not a zip")
    with pytest.raises(DAOInputError, match="junk.npz"):
        load_csv(tmp_path / "junk.npz")


def test_load_csv_mp20_val_and_cache(datasets_dir: Path, tmp_path: Path) -> None:
    path = datasets_dir / "mp_20_slice" / "val.csv"
    if not path.is_file():
        pytest.skip(f"{path} not found")
    cache = tmp_path / "cache"
    start = time.perf_counter()
    records = load_csv(path, "formation_energy_per_atom", cache_dir=cache)
    cold = time.perf_counter() - start
    assert len(records) == 123
    frame = pd.read_csv(path)
    assert [r.material_id for r in records] == frame["material_id"].tolist()
    np.testing.assert_allclose(
        [r.energy for r in records], frame["formation_energy_per_atom"], rtol=1e-12
    )
    assert all(((r.frac >= 0) & (r.frac < 1)).all() for r in records)
    assert len(list(cache.glob("*.npz"))) == 1
    start = time.perf_counter()
    cached = load_csv(path, "formation_energy_per_atom", cache_dir=cache)
    warm = time.perf_counter() - start
    assert warm < cold
    for a, b in zip(records, cached, strict=True):
        assert a.material_id == b.material_id and a.energy == b.energy
        assert np.array_equal(a.atomic_numbers, b.atomic_numbers)
        assert np.array_equal(a.frac, b.frac) and np.array_equal(a.lattice, b.lattice)
    # different options -> a different cache entry
    load_csv(path, cache_dir=cache)
    assert len(list(cache.glob("*.npz"))) == 2
    # the canonical cell matches the CIF's structure
    raw = Structure.from_str(frame["cif"][0], fmt="cif")
    assert records[0].to_structure().volume == pytest.approx(raw.volume, rel=1e-5)


def test_size_buckets_cut_padding_and_keep_every_index() -> None:
    # carbon-24's validation sizes: 6-24 atoms, most of them small
    counts = {6: 671, 8: 559, 10: 309, 12: 231, 14: 95, 16: 76, 18: 50, 20: 18, 22: 16, 24: 7}
    sizes = np.random.default_rng(0).permutation(np.repeat(list(counts), list(counts.values())))
    buckets = size_buckets(sizes, batch_size=1000)
    assert sorted(np.concatenate(buckets).tolist()) == list(range(len(sizes)))
    assert all(len(b) <= 1000 for b in buckets)
    assert all(sizes[a].max() <= sizes[b].min() for a, b in itertools.pairwise(buckets))
    padded = sum(len(b) * sizes[b].max() for b in buckets)
    assert padded < 0.5 * len(sizes) * sizes.max()  # one padded batch: 48,768 rows
    one_shape = size_buckets(sizes, batch_size=4096, batch_cost=np.inf)
    assert len(one_shape) == 1 and len(one_shape[0]) == len(sizes)
    assert [len(b) for b in size_buckets([3, 1, 2, 1], batch_size=2, batch_cost=0)] == [2, 1, 1]


def test_size_buckets_infinite_cost_only_chunks() -> None:
    # no padding cuts: the sorted indices in batch_size chunks, each padded to its own largest
    sizes = np.array([5, 20, 5, 10, 10])
    buckets = size_buckets(sizes, batch_size=2, batch_cost=np.inf)
    assert [b.tolist() for b in buckets] == [[0, 2], [3, 4], [1]]
    assert [int(sizes[b].max()) for b in buckets] == [5, 10, 20]  # three shapes, not one
